"""OpenAI function calling for the API: ``tools`` and ``tool_choice`` in, ``tool_calls`` out.

A request's tools are written into the system prompt, its earlier calls and tool results into the conversation,
exactly as the agent writes them (:mod:`llm_course.agent.messages`). ``tool_choice`` picks the grammar the reply
decodes under (:class:`~llm_course.agent.constrained.CallGrammar`, llguidance, compiled per request in a worker
thread): ``required`` any one call, a named function that call, ``auto`` a call or a text answer that does not start
with ``{``, ``none`` no tools in the prompt and no grammar. The constrained reply decodes in the shared batch like any
other (:mod:`.batching` masks its row's logits). :class:`ReplyReader` turns the reply's text into OpenAI's message or
stream deltas; a reply holds at most one call.
"""

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from llm_course.agent.messages import CALL_FORMAT, CALL_OR_TEXT, render_call, result_message, system_prompt
from llm_course.agent.tools import Tool
from llm_course.errors import MissingDependencyError
from llm_course.inference.sampling import InvalidRequest

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for a function name
CHOICES = ("none", "auto", "required")
DEFAULT_INTRO = "You are a helpful assistant."
FOLLOW_UP = "Answer the user, or call another tool."
# the head of a call as the grammar writes it (json.dumps's separators, "name" first): the name streams before the rest
CALL_HEAD = re.compile(r'\{"name": "([a-zA-Z0-9_-]{1,64})", "arguments": ')


class FunctionSpec(BaseModel):
    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None  # None: no arguments
    strict: bool | None = None  # accepted; the grammar always holds the reply to the schema


class ToolSpec(BaseModel):
    type: Literal["function"]
    function: FunctionSpec


class CalledFunction(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    """A call in an earlier assistant message of the conversation."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


@dataclass
class ToolPlan:
    """What a request asks of its tools: all of them (shown in the prompt unless ``choice`` is none) and the ones the
    grammar allows (``callable``: all for auto and required, one for a named function, none for none)."""

    tools: list[Tool] = field(default_factory=list)
    choice: Literal["none", "auto", "required", "function"] = "none"
    callable: list[Tool] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)  # tool name -> its place in the request's tools

    @property
    def constrained(self) -> bool:
        return bool(self.callable)


def plan_tools(tools: list[ToolSpec] | None, tool_choice: str | dict[str, Any] | None) -> ToolPlan:
    """Check ``tools`` and ``tool_choice`` (cheap: no grammar yet) and say what the reply may do.

    Raises:
        InvalidRequest: a bad or repeated name, a parameters schema that is not an object, or a ``tool_choice``
            that is unknown, names no tool of ``tools``, or asks for a call with no tools.
    """
    plan = ToolPlan()
    for i, spec in enumerate(tools or []):
        f, where = spec.function, f"tools.{i}.function"
        if not NAME.match(f.name):
            raise InvalidRequest(f"{where}.name={f.name[:80]!r} must match {NAME.pattern} (letters, digits, _ and -, "
                                 "at most 64)", param=f"{where}.name")  # fmt: skip
        if f.name in plan.index:
            raise InvalidRequest(f"{where}.name={f.name!r} is also the name of tools.{plan.index[f.name]}: each tool "
                                 "needs a name of its own", param=f"{where}.name")  # fmt: skip
        parameters = f.parameters if f.parameters is not None else {"type": "object", "properties": {}}
        if parameters.get("type", "object") != "object":
            raise InvalidRequest(f"{where}.parameters has type {parameters.get('type')!r}: the arguments of a "
                                 'function are a JSON object ({"type": "object", "properties": ...})',
                                 param=f"{where}.parameters")  # fmt: skip
        plan.index[f.name] = i
        plan.tools.append(Tool(f.name, f.description, parameters))
    choice = "auto" if tool_choice is None else tool_choice
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise InvalidRequest(f"tool_choice={str(choice)[:120]} is not one of: none, auto, required, "
                                 '{"type": "function", "function": {"name": ...}}', param="tool_choice")  # fmt: skip
        if name not in plan.index:
            known = ", ".join(plan.index) or "none: the request has no tools"
            raise InvalidRequest(f"tool_choice names the function {name[:80]!r}, which is not in tools ({known})",
                                 param="tool_choice")  # fmt: skip
        plan.choice, plan.callable = "function", [plan.tools[plan.index[name]]]
        return plan
    if choice not in CHOICES:
        raise InvalidRequest(f"tool_choice={str(choice)[:80]!r} is not one of: none, auto, required, "
                             '{"type": "function", "function": {"name": ...}}', param="tool_choice")  # fmt: skip
    if choice == "required" and not plan.tools:
        raise InvalidRequest("tool_choice='required' needs tools: send tools, or tool_choice 'auto' or 'none'",
                             param="tool_choice")  # fmt: skip
    plan.choice = choice if plan.tools else "none"
    plan.callable = plan.tools if plan.choice in ("auto", "required") else []
    return plan


def prompt_messages(messages: list[dict[str, Any]], plan: ToolPlan) -> list[dict[str, str]]:
    """The conversation as plain chat turns: the tools in the system prompt (after the client's own system text),
    earlier calls as the assistant's JSON, each tool result as a user turn naming its function.

    Raises:
        InvalidRequest: a call's arguments are not JSON, or a tool message answers no earlier call.
    """
    calls: dict[str, str] = {}  # call id -> function name
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            name, where = calls.get(m["tool_call_id"]), f"messages.{i}.tool_call_id"
            if name is None:
                known = ", ".join(calls) or "there is none"
                raise InvalidRequest(f"{where}={m['tool_call_id'][:80]!r} answers no earlier tool call (the calls' "
                                     f"ids: {known[:300]})", param=where)  # fmt: skip
            out.append(result_message(name, m["content"], FOLLOW_UP))
        elif m.get("tool_calls"):
            parts = [m["content"]] if m["content"] else []
            for j, call in enumerate(m["tool_calls"]):
                where = f"messages.{i}.tool_calls.{j}.function.arguments"
                try:
                    arguments = json.loads(call.function.arguments)
                except json.JSONDecodeError as err:
                    raise InvalidRequest(f"{where} is not JSON: {err.msg} at character {err.pos}", param=where) from err
                calls[call.id] = call.function.name
                parts.append(render_call(call.function.name, arguments))
            out.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if plan.choice != "none":
        intro = out.pop(0)["content"] if out and out[0]["role"] == "system" else DEFAULT_INTRO
        call_format = CALL_OR_TEXT if plan.choice == "auto" else CALL_FORMAT
        out.insert(0, {"role": "system", "content": system_prompt(intro, plan.tools, call_format)})
    return out


def call_constraint(plan: ToolPlan, engine: Any) -> Any:
    """A fresh grammar state for the reply (the batch masks its row with it). Compiles: run it off the event loop.

    Raises:
        InvalidRequest: llguidance is not installed, or a tool's parameters do not compile (``param`` names it).
    """
    from llm_course.agent.constrained import INSTALL, CallGrammar, call_schema

    vocab = int(getattr(engine.model.config, "vocab_size", 0) or len(engine.tokenizer))
    try:
        grammar = CallGrammar(call_schema(plan.callable), engine.tokenizer, vocab, or_text=plan.choice == "auto")
    except MissingDependencyError as err:
        raise InvalidRequest(f"tool_choice={plan.choice!r} needs llguidance on the server ({INSTALL} there); "
                             "tool_choice 'none' works without it", param="tool_choice",
                             code="missing_dependency") from err  # fmt: skip
    except ValueError as err:  # find the tool whose schema fails, alone
        for tool in plan.callable:
            where = f"tools.{plan.index[tool.name]}.function.parameters"
            try:
                CallGrammar(call_schema([tool]), engine.tokenizer, vocab)
            except ValueError as alone:
                raise InvalidRequest(f"{where}: {str(alone)[:300]}", param=where) from err
        raise InvalidRequest(f"the tools' schemas do not compile together: {str(err)[:300]}", param="tools") from err
    return grammar.constraint()


class ReplyReader:
    """A reply's text pieces read as OpenAI's assistant message: text, or one call whose name is sent as soon as the
    grammar has written it and whose arguments then stream as they come (one character held back: the closing ``}``
    of the call object is not part of them).

    Args:
        may_call: the reply decodes under a call grammar; its first character tells a call (``{``) from text.
    """

    def __init__(self, may_call: bool) -> None:
        self.mode: Literal["unknown", "text", "call"] = "unknown" if may_call else "text"
        self.text, self.name, self.head, self.sent, self.complete = "", None, 0, 0, False
        self.call_id = f"call_{uuid.uuid4().hex[:24]}"

    def feed(self, piece: str) -> list[dict[str, Any]]:
        """The stream deltas (``{"content": ...}`` or ``{"tool_calls": [...]}``) that ``piece`` releases."""
        self.text += piece
        if self.mode == "unknown" and self.text:
            self.mode = "call" if self.text.startswith("{") else "text"
            piece = self.text
        if self.mode == "text":
            return [{"content": piece}] if piece else []
        return self._call_deltas(final=False)

    def finish(self) -> list[dict[str, Any]]:
        """The deltas left at the end of the reply. A call cut short (``max_tokens``) keeps its partial arguments,
        as OpenAI's do; one cut before its name was written is returned as text."""
        if self.mode != "call":
            return []
        try:
            self.complete = isinstance(json.loads(self.text), dict)
        except json.JSONDecodeError:
            pass
        deltas = self._call_deltas(final=True)
        if self.name is None:
            self.mode = "text"
            return [{"content": self.text}]
        return deltas

    def finish_reason(self, otherwise: str) -> str:
        return "tool_calls" if self.mode == "call" and self.complete else otherwise

    def message(self) -> dict[str, Any]:
        """The whole reply as OpenAI's message (after :meth:`finish`)."""
        if self.mode != "call":
            return {"role": "assistant", "content": self.text}
        function = {"name": self.name, "arguments": self._arguments(final=True)}
        return {"role": "assistant", "content": None,
                "tool_calls": [{"id": self.call_id, "type": "function", "function": function}]}  # fmt: skip

    def _arguments(self, final: bool) -> str:
        end = len(self.text) if final and not self.complete else len(self.text) - 1
        return self.text[self.head : max(end, self.head)]

    def _call_deltas(self, final: bool) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if self.name is None:
            match = CALL_HEAD.match(self.text)
            if match is None:
                return deltas
            self.name, self.head = match.group(1), match.end()
            function = {"name": self.name, "arguments": ""}
            deltas.append({"tool_calls": [{"index": 0, "id": self.call_id, "type": "function", "function": function}]})
        new = self._arguments(final)[self.sent :]
        if new:
            self.sent += len(new)
            deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": new}}]})
        return deltas
