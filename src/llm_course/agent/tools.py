"""Tools are typed Python functions: the signature and the Google-style docstring are the JSON schema.

:func:`tool` turns a function into a :class:`Tool` (name, description, JSON schema of its arguments), which renders
in the OpenAI ``tools`` format and checks the arguments a model wrote before the function runs. :class:`ToolBox`
runs a call with a time limit: a tool that raises, times out or gets invalid arguments returns an error the model
can read, and never stops the caller.
"""

import inspect
import re
import threading
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from llm_course.errors import ConfigError

MAX_STRING = 200  # characters of a string argument: bounds what a constrained decoder may write (~50 tokens)
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class Tool:
    """A function a model may call, with the JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema: {"type": "object", "properties": ..., "required": ...}
    function: Callable[..., Any] | None = field(default=None, repr=False)  # None: a client's tool (the server's API)

    def openai(self) -> dict[str, Any]:
        """The tool in the OpenAI ``tools`` format (what vLLM, llama.cpp's server and hosted APIs accept)."""
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}

    def signature(self) -> str:
        """One line for a prompt: ``lookup_order(order_id: integer): Look an order up by its number.``"""
        args = ", ".join(f"{k}: {type_name(v)}" for k, v in self.parameters.get("properties", {}).items())
        return f"{self.name}({args}): {self.description}"


def type_name(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " | ".join(map(repr, schema["enum"]))
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {type_name(schema.get('items', {}))}"
    return " | ".join(kind) if isinstance(kind, list) else str(kind)


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The summary (the first paragraph) and the ``Args:`` descriptions of a Google-style docstring."""
    text = inspect.cleandoc(doc or "")
    summary, _, rest = text.partition("\nArgs:")
    summary = " ".join(re.split(r"\n\s*\n|\n[A-Z][a-z]+:\n", summary)[0].split())  # the first paragraph
    args: dict[str, str] = {}
    current, indent = None, 0
    for line in rest.splitlines():
        if line and not line[0].isspace():  # the next section (Returns:, Raises:)
            break
        match = re.match(r"^\s{2,8}(\w+)(?: \(.*?\))?:\s*(.*)$", line)
        if match and (current is None or len(line) - len(line.lstrip()) <= indent):
            current, indent = match.group(1), len(line) - len(line.lstrip())
            args[current] = match.group(2).strip()
        elif current is not None and line.strip():
            args[current] += " " + line.strip()
    return summary, args


def schema_of(annotation: Any, where: str) -> dict[str, Any]:
    """The JSON schema of a type hint: str, int, float, bool, Literal[...], list[...] (``X | None``: of X)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in JSON_TYPES:
        schema: dict[str, Any] = {"type": JSON_TYPES[annotation]}
        return schema | {"maxLength": MAX_STRING} if annotation is str else schema
    if origin is Literal:
        kinds = {JSON_TYPES.get(type(a)) for a in args}
        return {"type": kinds.pop(), "enum": list(args)} if len(kinds) == 1 else {"enum": list(args)}
    if origin is list and args:
        return {"type": "array", "items": schema_of(args[0], where), "maxItems": 20}
    if origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
        return schema_of(next(a for a in args if a is not type(None)), where)
    raise ConfigError(f"{where} has the type {annotation!r}; a tool's arguments may be str, int, float, bool, "
                      "Literal[...], list[...] or X | None")  # fmt: skip


def tool(function: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Make a :class:`Tool` of a typed function (usable as ``@tool`` or ``tool(f, name="x")``).

    Raises:
        ConfigError: a parameter has no type hint, or one a JSON schema cannot say.
    """
    if function is None:
        return lambda f: tool(f, name=name)
    hints = typing.get_type_hints(function)
    summary, docs = parse_docstring(function.__doc__)
    properties, required = {}, []
    for param in inspect.signature(function).parameters.values():
        where = f"tool {function.__name__}, argument {param.name!r}"
        if param.name not in hints:
            raise ConfigError(f"{where} has no type hint: the schema is made from the hints")
        schema = schema_of(hints[param.name], where)
        if docs.get(param.name):
            schema["description"] = docs[param.name]
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        elif param.default is not None:
            schema["default"] = param.default
        properties[param.name] = schema
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return Tool(name or function.__name__, summary, parameters, function)


def check_value(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    """What is wrong with ``value`` under ``schema`` (the subset :func:`schema_of` writes); empty when valid."""
    kind = schema.get("type")
    checks = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
              "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict)}  # fmt: skip
    if kind in checks and not checks[kind](value):
        return [f"{where} must be {'an' if kind in ('integer', 'array', 'object') else 'a'} {kind}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}={value!r} is not one of: {', '.join(map(str, schema['enum']))}"]
    if "const" in schema and value != schema["const"]:
        return [f"{where}={value!r} must be {schema['const']!r}"]
    if kind == "string" and len(value) > schema.get("maxLength", len(value)):
        return [f"{where} is {len(value)} characters, over {schema['maxLength']}"]
    if kind == "array":
        return [p for i, item in enumerate(value) for p in check_value(item, schema["items"], f"{where}[{i}]")]
    if kind == "object":
        props = schema.get("properties", {})
        problems = [f"{where} lacks {k!r}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            problems += [f"{where} has an unknown key {k!r} (allowed: {', '.join(props)})" for k in value
                         if k not in props]  # fmt: skip
        return problems + [p for k, v in value.items() if k in props for p in check_value(v, props[k], k)]
    return []


@dataclass
class ToolResult:
    """What a call returned: ``value`` (JSON-able) or ``error`` (a message for the model), and how long it took."""

    name: str
    arguments: dict[str, Any]
    value: Any = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def for_model(self) -> Any:
        return self.value if self.ok else {"error": self.error}


class ToolBox:
    """The tools an agent may call, by name, each call bounded by ``timeout`` seconds."""

    def __init__(self, tools: list[Tool], timeout: float = 10.0) -> None:
        if len({t.name for t in tools}) != len(tools):
            raise ConfigError(f"tool names must be unique: {[t.name for t in tools]}")
        self.tools, self.timeout = {t.name: t for t in tools}, timeout

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def problems(self, name: Any, arguments: Any) -> list[str]:
        """Why ``name(**arguments)`` cannot be called; empty when it can."""
        if name not in self.tools:
            return [f"there is no tool {name!r}; tools: {', '.join(self.tools)}"]
        return check_value(arguments, self.tools[name].parameters, "arguments")

    def call(self, name: str, arguments: dict[str, Any], timeout: float | None = None) -> ToolResult:
        """Run one call in a thread, waiting at most ``timeout`` seconds (default: the box's). A tool that raises
        or does not return in time gives a :class:`ToolResult` with an ``error``; a timed-out thread is left to end
        on its own (Python cannot stop a thread), so tools should bound their own work too."""
        start, result = time.perf_counter(), ToolResult(name, arguments)
        if problems := self.problems(name, arguments):
            result.error = "invalid call: " + "; ".join(problems)
            return result
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = self.tools[name].function(**arguments)
            except Exception as err:  # returned to the model as text; the loop goes on
                box["error"] = f"{type(err).__name__}: {err}"

        limit = self.timeout if timeout is None else timeout
        worker = threading.Thread(target=run, name=f"tool-{name}", daemon=True)
        worker.start()
        worker.join(max(limit, 0.0))
        result.seconds = time.perf_counter() - start
        if worker.is_alive():
            result.error = f"the tool {name} did not answer within {limit:.1f} s"
        elif "error" in box:
            result.error = box["error"]
        else:
            result.value = box.get("value")
        return result
