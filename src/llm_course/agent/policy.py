"""Who chooses the next tool call: a chat model (constrained by the call grammar, or free and parsed afterwards).

A policy takes the conversation so far (plain chat messages) and returns a :class:`Decision`: the call, whether the
text was JSON and a valid call, and the time it took. The keyword-rule baselines in :mod:`llm_course.agent.desk.routing`
and :mod:`llm_course.agent.builtin` return the same type, so the loop, the desk and the benchmark treat them alike.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_course.agent.constrained import CallGrammar, call_schema, generate, parse_call
from llm_course.agent.messages import render_call, system_prompt
from llm_course.agent.prefix import PrefixCache
from llm_course.agent.tools import Tool
from llm_course.inference.sampling import InvalidRequest


@dataclass
class Decision:
    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    raw: str = ""  # what the model wrote (for a rule: the call it made)
    json_ok: bool = True
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0

    @property
    def valid(self) -> bool:
        return self.json_ok and not self.problems and self.name is not None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments, "raw": self.raw, "json": self.json_ok,
                "valid": self.valid, "problems": self.problems, "seconds": round(self.seconds, 3)}  # fmt: skip


class Policy(Protocol):
    label: str

    def decide(self, history: list[dict[str, str]], max_seconds: float | None = None) -> Decision: ...


Example = list[tuple[str, str, dict[str, Any]] | tuple[str, str]]  # (user text, tool, arguments) or (user, tool result)


def example_turns(examples: list[Example]) -> list[dict[str, str]]:
    """Few-shot examples as chat turns: each ``(user, tool, arguments)`` becomes a user turn and the call as the
    assistant's reply; ``(text, "")`` adds a user turn alone (a tool's result in a multi-step example)."""
    turns: list[dict[str, str]] = []
    for example in examples:
        turns.append({"role": "user", "content": example[0]})
        if len(example) == 3:
            turns.append({"role": "assistant", "content": render_call(example[1], example[2])})
    return turns


class ModelPolicy:
    """A chat model choosing calls among ``tools``.

    Args:
        engine: a loaded :class:`~llm_course.inference.engine.GenerationEngine`.
        tools: the tools it may call (their signatures go in the system prompt; the grammar allows only them).
        intro: the first lines of the system prompt.
        examples: few-shot conversations shown before the real one.
        constrained: decode under the call grammar (every call valid), or freely and parse the text.
        max_new_tokens: longest call.
        narrow: with ``constrained``, a function of the conversation that returns the tools with narrower argument
            schemas for this call (the desk's :func:`~llm_course.agent.desk.desk.quote_message`: an order number
            must be one the message names); compiled per call (a few ms).
    """

    def __init__(self, engine: Any, tools: list[Tool], intro: str, examples: list[Example] | None = None,
                 constrained: bool = True, max_new_tokens: int = 64,
                 narrow: Callable[[list[dict[str, str]]], list[Tool]] | None = None) -> None:  # fmt: skip
        self.engine, self.tools, self.constrained, self.max_new_tokens = engine, tools, constrained, max_new_tokens
        self.narrow = narrow if constrained else None
        self.vocab = int(getattr(engine.model.config, "vocab_size", 0) or len(engine.tokenizer))
        self.prefix = [{"role": "system", "content": system_prompt(intro, tools)}, *example_turns(examples or [])]
        self.cache = PrefixCache(engine, self.prefix)
        self.grammar = None
        if constrained:
            self.grammar = CallGrammar(call_schema(tools), engine.tokenizer, self.vocab)
        shots = len([e for e in examples or [] if len(e) == 3])
        kind = "unconstrained" if not constrained else "constrained, quoting" if self.narrow else "constrained"
        self.label = f"{kind}, {shots}-shot"

    def decide(self, history: list[dict[str, str]], max_seconds: float | None = None) -> Decision:
        tools, grammar = self.tools, self.grammar
        if self.narrow is not None:
            tools = self.narrow(history)
            grammar = CallGrammar(call_schema(tools), self.engine.tokenizer, self.vocab)
        try:
            reply = generate(self.engine, self.prefix + history, self.max_new_tokens, grammar, max_seconds, self.cache)
        except InvalidRequest as err:  # the conversation outgrew the context: no call, said why
            return Decision(None, {}, "", json_ok=False, problems=[str(err)])
        parsed = parse_call(reply.text, tools)
        return Decision(parsed.name, parsed.arguments if isinstance(parsed.arguments, dict) else {}, reply.text,
                        parsed.json_ok, parsed.problems, reply.seconds, reply.tokens)  # fmt: skip


def rule_decision(name: str, arguments: dict[str, Any], start: float) -> Decision:
    """A keyword rule's call, as a :class:`Decision` (always valid JSON: it is written by code)."""
    return Decision(name, arguments, json.dumps({"name": name, "arguments": arguments}),
                    seconds=time.perf_counter() - start)  # fmt: skip
