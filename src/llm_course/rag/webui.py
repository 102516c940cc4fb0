"""The "Ask the course notes" tab of the serve page: the evidence sentences with their sources, the model's answer
streamed and then checked sentence by sentence, the passages it was given (links, text expandable), the scores.

It answers through the same :meth:`NotesQA.prepare` / :meth:`NotesQA.finish` as ``rag ask``; only the generation
between them goes through the server's scheduler, which it shares with the chat and the API.
"""

import html
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr
from fastapi.concurrency import run_in_threadpool

from llm_course.inference.scheduler import Scheduler
from llm_course.inference.webui import stream_reply
from llm_course.rag.answer import Answer, NotesQA, Prepared
from llm_course.rag.passages import Passage

SOURCE_ROUTE = "/source"  # serve.py serves the indexed files here, so the citations link to them


def passages_html(passages: list[Passage], label: str) -> str:
    """Numbered passages: a link to the file and heading, the lines and score, the text in a <details> block."""
    rows = [f"<p><b>{html.escape(label)}</b></p>"] if passages else []
    for p in passages:
        link = f"{SOURCE_ROUTE}/{html.escape(p.file)}"
        rows.append(f"<details><summary>[{p.n}] <a href=\"{link}\" target=\"_blank\">{html.escape(p.anchor)}</a> "
                    f"(lines {p.start_line}-{p.end_line}) · score {p.score:.3f}</summary>\n\n"
                    f"<pre style=\"white-space: pre-wrap\">{html.escape(p.text)}</pre>\n\n</details>")  # fmt: skip
    return "\n\n".join(rows)


def evidence_markdown(prepared: Prepared | Answer) -> str:
    lines = ["**Evidence from the notes**"]
    lines += [f"- [{e.sentence.n}] {e.sentence.text}  \n  <small>{e.sentence.citation()}</small>"
              for e in prepared.evidence] or ["- (no sentence of the passages answers it directly)"]  # fmt: skip
    return "\n".join(lines)


def answer_markdown(answer: Answer) -> str:
    """The final answer: the abstention, or the evidence and the model's sentences that passed the check (those that
    did not are listed apart, labelled)."""
    if answer.abstained:
        return answer.text
    parts = [evidence_markdown(answer)]
    if answer.generated is not None:
        shown = " ".join(answer.shown_generated)
        parts.append(
            "**Model's answer** (each sentence checked against the passages)\n\n"
            + (shown or "_No sentence of the model's reply is supported by the passages: evidence only._")
        )
        dropped = [c.text for c in answer.checked if not c.supported]
        if dropped:
            items = "".join(f"<li><s>{html.escape(d)}</s></li>" for d in dropped)
            parts.append(f"<details><summary>not in the notes: {len(dropped)} sentence(s) dropped</summary>"
                         f"<ul>{items}</ul></details>")  # fmt: skip
    return "\n\n".join(parts)


def retrieval_line(qa: NotesQA, answer: Prepared | Answer) -> str:
    r = answer.retrieval
    verdict = f"abstained ({qa.abstain_on} below {qa.min_score:.2f})" if answer.abstained else "answered"
    return (f"{qa.mode} retrieval {r.ms:.0f} ms · closest cosine {r.best_dense:.3f} · coverage {r.coverage:.2f} · "
            f"{verdict}")  # fmt: skip


def sources_html(answer: Prepared | Answer) -> str:
    if answer.abstained:
        return passages_html(answer.passages, "Closest passages (not cited: the notes do not cover the question)")
    return passages_html(answer.passages, "Passages given to the model (the citations)")


async def answer_stream(qa: NotesQA, scheduler: Scheduler, text: str) -> AsyncIterator[tuple[str, str, str]]:
    """(answer, retrieval line, passages) as the tab shows them: the evidence at once, the model's reply as it
    streams (labelled unchecked), then the final answer that ``qa.ask`` would give."""
    if not text.strip():
        yield "", "", ""
        return
    prepared = await run_in_threadpool(qa.prepare, text)
    found, listed = retrieval_line(qa, prepared), sources_html(prepared)
    if prepared.messages is None:
        yield answer_markdown(await run_in_threadpool(qa.finish, prepared)), found, listed
        return
    evidence = evidence_markdown(prepared)
    yield evidence, f"{found} · generating…", listed
    reply, reply_stats = "", None
    async for reply, reply_stats in stream_reply(scheduler, qa.engine, prepared.messages, prepared.params):  # noqa: B007
        yield f"{evidence}\n\n**Model's answer** (not checked yet)\n\n{reply}", f"{found} · generating…", listed
    final = await run_in_threadpool(qa.finish, prepared, reply, reply_stats)
    line = found if reply_stats is None else f"{found} · {reply_stats.line()}"
    yield answer_markdown(final), line, listed


def notes_tab(qa: NotesQA, scheduler: Scheduler) -> Callable[[], None]:
    """A function that adds the tab inside the page's ``gr.Blocks`` (``build_ui(extra_tabs={name: ...})``)."""

    def add() -> None:
        with gr.Tab("Ask the course notes"):
            gr.Markdown("Answers come from the notes: first the sentences of the notes that answer the question, "
                        "with their sources; the model's own sentences are shown only where the passages support "
                        "them. When the notes do not cover a question, it says so instead of guessing.")  # fmt: skip
            question = gr.Textbox(placeholder="e.g. Why is the first token slower than the others?", show_label=False,
                                  elem_id="notes-input")  # fmt: skip
            ask = gr.Button("Ask", variant="primary", elem_id="notes-send")
            answer = gr.Markdown(elem_id="notes-answer", min_height=80)
            stats = gr.Markdown(elem_id="notes-stats")
            sources = gr.HTML(elem_id="notes-sources")

            async def respond(text: str) -> AsyncIterator[tuple[str, str, str]]:
                async for shown in answer_stream(qa, scheduler, text):
                    yield shown

            question.submit(respond, question, [answer, stats, sources])
            ask.click(respond, question, [answer, stats, sources])

    return add


def add_source_route(app: Any, qa: NotesQA) -> None:
    """``GET /source/<file>``: the raw text of a file in the index, so citations open; any other path is a 404."""
    from pathlib import Path

    from fastapi.responses import JSONResponse, PlainTextResponse

    indexed = {chunk.file for chunk in qa.retriever.index.chunks}

    @app.get(SOURCE_ROUTE + "/{file:path}", response_model=None)
    async def source(file: str) -> PlainTextResponse | JSONResponse:
        if file not in indexed:  # only what the index holds: no path outside the notes can be read
            return JSONResponse({"error": {"message": f"{file} is not an indexed file", "type": "not_found"}}, 404)
        return PlainTextResponse(Path(file).read_text(encoding="utf-8", errors="replace"))
