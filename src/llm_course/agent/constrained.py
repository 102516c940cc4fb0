"""Tool calls decoded under a JSON-schema grammar (llguidance), so every call parses and names a real tool.

The call a model writes is one JSON object, ``{"name": TOOL, "arguments": {...}}``. Its schema is an ``anyOf`` with
one branch per tool (the name as a ``const``, the arguments as that tool's schema), compiled by llguidance into a
grammar over the model's own tokens. At each step a :class:`GrammarConstraint` says which tokens may come next and
every other logit is set to -inf: the model still chooses (which tool, which words), but only among continuations
that keep the text valid. When the object is complete, only the end-of-turn token is allowed. The server's decode
batch drives one constraint per constrained row; :func:`generate` drives one through :class:`GrammarLogitsProcessor`.
With ``or_text``, :class:`CallGrammar` allows either the call or a text answer that does not start with ``{``
(the server's ``tool_choice="auto"``).

llguidance (the grammar engine behind vLLM's, SGLang's and llama.cpp's ``--llguidance`` structured outputs) was
chosen over xgrammar, outlines and lm-format-enforcer for this course: a 3 MB wheel with no dependencies that works
with transformers 5 on a CPU, and a mask computed in about 0.1 ms a token (notes/09_agent_support.md).
"""

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llm_course.agent.prefix import PrefixCache
from llm_course.agent.tools import Tool, check_value
from llm_course.errors import MissingDependencyError

INSTALL = 'pip install -e ".[agent]"'
# json.dumps's separators: what the few-shot examples show and what the grammar then allows, nothing else
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_TOKENIZERS: dict[int, Any] = {}  # llguidance's view of a tokenizer costs ~0.4 s to build: once per tokenizer


# free text that cannot be taken for a call: it does not start with "{" (a call is the only reply that does)
TEXT_RULE = r"/[^{](.|\n)*/"


def call_schema(tools: list[Tool]) -> dict[str, Any]:
    """The JSON schema of one call to any of ``tools``: ``{"name": ..., "arguments": {...}}``. Each tool's
    ``$defs`` (pydantic writes them, with ``#/$defs/...`` references) move to the root, where the references point.

    Raises:
        ValueError: two tools define the same ``$defs`` name differently.
    """
    defs: dict[str, Any] = {}
    branches = []
    for t in tools:
        arguments = {k: v for k, v in t.parameters.items() if k != "$defs"}
        for name, schema in t.parameters.get("$defs", {}).items():
            if defs.setdefault(name, schema) != schema:
                raise ValueError(f"tool {t.name} defines $defs/{name} unlike another tool: rename one of them")
        branches.append({"type": "object", "properties": {"name": {"const": t.name}, "arguments": arguments},
                         "required": ["name", "arguments"], "additionalProperties": False})  # fmt: skip
    root = branches[0] if len(branches) == 1 else {"anyOf": branches}
    return root | ({"$defs": defs} if defs else {})


@dataclass
class ParsedCall:
    """A model's text read as a call: ``json_ok`` (a JSON object was found), ``valid`` (it names a tool and the
    arguments fit its schema), and the problems when not."""

    text: str
    name: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    json_ok: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.json_ok and not self.problems


def parse_call(text: str, tools: list[Tool]) -> ParsedCall:
    """Read the first JSON object in ``text`` as a call to one of ``tools`` (what an unconstrained model wrote)."""
    out = ParsedCall(text)
    start = text.find("{")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:]) if start >= 0 else (None, 0)
    except json.JSONDecodeError as err:
        out.problems = [f"not JSON: {err.msg} at character {err.pos}"]
        return out
    if not isinstance(value, dict):
        out.problems = ["no JSON object in the reply"]
        return out
    out.json_ok = True
    out.name, out.arguments = value.get("name"), value.get("arguments", {})
    by_name = {t.name: t for t in tools}
    if set(value) - {"name", "arguments"}:
        out.problems.append(f"unknown keys {sorted(set(value) - {'name', 'arguments'})}")
    if out.name not in by_name:
        out.problems.append(f"there is no tool {out.name!r}; tools: {', '.join(by_name)}")
    else:
        out.problems += check_value(out.arguments, by_name[out.name].parameters, "arguments")
    return out


def ll_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    try:
        import llguidance.hf
    except ImportError as err:
        raise MissingDependencyError(f"constrained tool calls need llguidance, not installed: {INSTALL}") from err
    key = id(tokenizer)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = (tokenizer, llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size))
    return _TOKENIZERS[key][1]


class CallGrammar:
    """A call schema compiled for one tokenizer (with ``or_text``: the call or a text answer not starting with
    ``{``); :meth:`constraint` gives a fresh state per reply, :meth:`processor` one for ``model.generate``.

    Raises:
        MissingDependencyError: llguidance is not installed.
        ValueError: the schema does not compile (the message is llguidance's).
    """

    def __init__(self, schema: dict[str, Any], tokenizer: Any, vocab_size: int, or_text: bool = False) -> None:
        self.schema, self.vocab_size, self.eos_token_id = schema, vocab_size, tokenizer.eos_token_id
        self.tokenizer = ll_tokenizer(tokenizer, vocab_size)
        import llguidance

        if or_text:  # %json takes the options inside the schema
            call = json.dumps(schema | {"x-guidance": JSON_OPTIONS})
            self.grammar = llguidance.LLMatcher.grammar_from_lark(f"start: call | text\ncall: %json {call}\n"
                                                                  f"text: {TEXT_RULE}\n")  # fmt: skip
        else:
            self.grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(self.grammar, self.tokenizer)
        if is_error:
            raise ValueError(f"the call schema does not compile: {messages[0] if messages else 'no reason given'}")

    def constraint(self) -> "GrammarConstraint":
        import llguidance

        return GrammarConstraint(llguidance.LLMatcher(self.tokenizer, self.grammar, log_level=0), self.eos_token_id)

    def processor(self) -> "GrammarLogitsProcessor":
        return GrammarLogitsProcessor(self.constraint())


class GrammarConstraint:
    """One reply's place in a grammar: :meth:`allowed` says which token ids may come next, :meth:`advance` takes the
    token chosen. The decode batch calls both for its constrained rows (the first token too, from the prefill)."""

    def __init__(self, matcher: Any, eos_token_id: int) -> None:
        self.matcher, self.eos_token_id, self.mask_s, self.steps = matcher, eos_token_id, 0.0, 0

    def allowed(self, vocab_size: int) -> torch.Tensor:
        """A boolean mask over ``vocab_size`` ids (on the CPU), from the matcher's bitmask: one bit per token id,
        little-endian words."""
        start = time.perf_counter()
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        n = min(len(bits), vocab_size)
        allowed[:n] = torch.from_numpy(bits[:n].astype(bool))
        if not allowed.any():  # an error state (it should not happen): end the reply rather than emit anything
            allowed[self.eos_token_id] = True
        self.mask_s += time.perf_counter() - start
        self.steps += 1
        return allowed

    def advance(self, token: int) -> None:
        start = time.perf_counter()
        self.matcher.consume_token(token)
        self.mask_s += time.perf_counter() - start


class GrammarLogitsProcessor:
    """A transformers logits processor (batch of one) over a :class:`GrammarConstraint`: called once per step with
    the ids so far, it first advances the constraint by the token chosen at the previous step, then masks."""

    def __init__(self, constraint: GrammarConstraint) -> None:
        self.constraint, self.started = constraint, False

    @property
    def mask_s(self) -> float:
        return self.constraint.mask_s

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != 1:
            raise ValueError(f"constrained decoding here takes one sequence at a time, got {input_ids.shape[0]}")
        if self.started:
            self.constraint.advance(int(input_ids[0, -1]))
        self.started = True
        allowed = self.constraint.allowed(scores.shape[-1])
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))


@dataclass
class Reply:
    """One reply: its text, tokens, seconds, and (constrained) time spent computing masks."""

    text: str
    tokens: int
    seconds: float
    mask_s: float = 0.0


def generate(engine: Any, messages: list[dict[str, str]], max_new_tokens: int = 96,
             grammar: CallGrammar | None = None, max_seconds: float | None = None,
             prefix: PrefixCache | None = None) -> Reply:  # fmt: skip
    """A greedy reply from a :class:`~llm_course.inference.engine.GenerationEngine`'s model, under ``grammar`` when
    given, stopped after ``max_seconds`` if it takes longer (transformers' ``max_time``), starting from ``prefix``'s
    cache when the prompt begins with it. The engine has no logits-processor or prefix-cache hook yet, so this calls
    ``model.generate`` itself, holding the engine's lock as the engine's own decoding does."""
    from transformers import LogitsProcessorList

    from llm_course.inference.sampling import SamplingParams

    params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens)
    ids = engine.check(messages, params)
    tokenizer = engine.tokenizer
    kwargs: dict[str, Any] = {
        "input_ids": torch.tensor([ids], device=engine.device),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=engine.device),
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **params.generate_kwargs(),
    }
    if max_seconds is not None:
        kwargs["max_time"] = max(max_seconds, 0.01)
    processor = None
    if grammar is not None:
        processor = grammar.processor()
        kwargs["logits_processor"] = LogitsProcessorList([processor])
    start = time.perf_counter()
    with engine.lock, torch.inference_mode():
        if prefix is not None and prefix.covers(ids):
            kwargs["cache"] = prefix.copy()  # transformers 5.25 renamed past_key_values to cache
        out = engine.model.generate(**kwargs)
    new = out[0, len(ids) :].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Reply(text.strip(), len(new), time.perf_counter() - start, processor.mask_s if processor else 0.0)
