"""How tools, calls and tool results are written into a chat: one place for the agent loop and for the server's
OpenAI function calling (:mod:`llm_course.inference.functions`), so a model sees the same format from both.

A call is one JSON object, ``{"name": TOOL, "arguments": {...}}``; the tools are one line each in the system prompt;
a tool's result comes back as a user turn (SmolLM2's chat template knows only system, user and assistant). Plain
strings and ``json`` only: the server imports this without the agent's engine-side modules.
"""

import json
from typing import Any

from llm_course.agent.tools import Tool

FINAL = "final_answer"  # the agent loop's tool that ends a run
RESULT_CHARS = 600  # of a tool result shown to the model: a small model's context is short
CALL_FORMAT = 'Answer with one JSON object and nothing else: {"name": TOOL, "arguments": {...}}.'
# the server's tool_choice="auto": a call or a text answer
CALL_OR_TEXT = 'To call a tool, answer with one JSON object and nothing else: {"name": TOOL, "arguments": {...}}.'


def system_prompt(intro: str, tools: list[Tool], call_format: str = CALL_FORMAT) -> str:
    """The instructions: who the assistant is, one line per tool, and the call format."""
    lines = "\n".join(f"- {t.signature()}" for t in tools)
    return f"{intro}\nTools:\n{lines}\n{call_format}"


def render_call(name: str, arguments: dict[str, Any]) -> str:
    """A call as the model is shown and asked to write it."""
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def short(value: Any, limit: int = RESULT_CHARS) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def result_message(name: str, value: Any, follow_up: str = f"Call another tool or {FINAL}.") -> dict[str, str]:
    """A tool's result as the next user turn, ending with what the model should do next."""
    return {"role": "user", "content": f"Result of {name}: {short(value)}\n{follow_up}"}
