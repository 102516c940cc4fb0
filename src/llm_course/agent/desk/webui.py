"""The "Support desk" tab of the serve page: one customer message → the sentiment, the tool trace, the reply with its
citations, and the hand-over (with the summary for the person taking over).

It calls the same :meth:`SupportDesk.handle` as ``llm-course support`` and only renders its :class:`SupportResult`
differently. The desk's model policy decodes on the server's engine under the engine's lock, which the scheduler
takes per decode step: a desk call and the chat's batches take turns on one copy of the model.
"""

import html
import json
from collections.abc import Callable
from typing import Any

import gradio as gr
from fastapi.concurrency import run_in_threadpool

from llm_course.agent.desk.desk import SupportDesk, SupportResult
from llm_course.errors import ConfigError

CELL_CHARS = 200  # a trace cell is cut here: a help-centre search returns whole passages


def cell(value: Any) -> str:
    """A value as an escaped table cell: text as it is, anything else as JSON, cut to ``CELL_CHARS``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return html.escape(text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…")


def trace_html(result: SupportResult) -> str:
    """The tool trace as a table: tool, arguments, result (or error), seconds, and who chose the call."""
    head = "".join(f"<th>{h}</th>" for h in ("tool", "arguments", "result", "seconds", "chosen by"))
    rows = []
    for step in result.trace:
        shown = f"error: {step['error']}" if step.get("error") else step.get("result")
        cells = (step["tool"], step["arguments"], shown, f"{step['seconds']:.2f}", step["by"])
        rows.append("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in cells) + "</tr>")
    return f"<p><b>Tool trace</b></p><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def verdict_markdown(result: SupportResult, policy: str) -> str:
    """The sentiment with its confidence and classifier, the hand-over flag, the time and the policy."""
    s = result.sentiment
    return (f"**sentiment:** {s.label} ({s.confidence:.2f}) · by {s.classifier}  \n"
            f"**hand-over to a person:** {'yes' if result.handed_over else 'no'} · "
            f"{result.seconds:.2f} s · policy: {policy}")  # fmt: skip


def reply_markdown(result: SupportResult) -> str:
    """The reply, its citations, and the summary for the person taking over when there is one."""
    parts = ["**Reply**", html.escape(result.reply), "**Citations**"]
    parts.append("\n".join(f"- {html.escape(c)}" for c in result.citations) or "none")
    if result.summary:
        parts += ["**Summary for the person taking over**", html.escape(result.summary)]
    return "\n\n".join(parts)


def desk_tab(desk: SupportDesk) -> Callable[[], None]:
    """A function that adds the tab inside the page's ``gr.Blocks`` (``build_ui(extra_tabs={name: ...})``)."""

    def add() -> None:
        with gr.Tab("Support desk"):
            gr.Markdown("The support desk of Larkspur & Co., a fictional shop (`llm-course support`): a classifier "
                        "reads the mood, the model or a hand-over rule chooses one tool, and the reply is built from "
                        "what the tool returned, with its sources. Payment details, angry customers and questions the "
                        "help centre does not cover go to a person.")  # fmt: skip
            message = gr.Textbox(placeholder="e.g. Where is my order 1042?", show_label=False, elem_id="desk-input")
            send = gr.Button("Send to the desk", variant="primary", elem_id="desk-send")
            verdict = gr.Markdown(elem_id="desk-verdict")
            reply = gr.Markdown(elem_id="desk-reply", min_height=80)
            trace = gr.HTML(elem_id="desk-trace")

            async def respond(text: str) -> tuple[str, str, str]:
                try:  # off the event loop: the page and the API stay responsive during the model's call
                    result = await run_in_threadpool(desk.handle, text)
                except ConfigError as err:  # an empty message: its reason, not a traceback
                    return f"**error:** {html.escape(str(err))}", "", ""
                return verdict_markdown(result, desk.policy.label), reply_markdown(result), trace_html(result)

            # one message at a time: a desk call holds the engine's lock for its whole model call, so a second
            # would only wait (the chat's batches still take turns with it)
            for event in (message.submit, send.click):
                event(respond, message, [verdict, reply, trace], concurrency_limit=1)

    return add
