"""The "Ask the course notes" tab of the serve page: a streamed answer, its numbered sources (links, with the passage
text expandable), the retrieval scores and the timings."""

import html
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr
from fastapi.concurrency import run_in_threadpool

from llm_course.inference.scheduler import Scheduler
from llm_course.inference.webui import stream_reply
from llm_course.rag.answer import ABSTAIN, NotesQA, sources_of
from llm_course.rag.retrieve import Retrieval

SOURCE_ROUTE = "/source"  # serve.py serves the indexed files here, so the citations link to them


def sources_markdown(retrieval: Retrieval) -> str:
    """Numbered sources: a link to the file and heading, the lines and score, the passage in a <details> block."""
    rows = []
    for s in sources_of(retrieval):
        link = f"{SOURCE_ROUTE}/{html.escape(s['file'])}"
        passage = html.escape(s["text"])
        rows.append(f"<details><summary>[{s['n']}] <a href=\"{link}\" target=\"_blank\">{html.escape(s['anchor'])}</a> "
                    f"(lines {s['lines'][0]}-{s['lines'][1]}) · score {s['score']:.3f}</summary>\n\n"
                    f"<pre style=\"white-space: pre-wrap\">{passage}</pre>\n\n</details>")  # fmt: skip
    return "\n\n".join(rows)


def retrieval_line(qa: NotesQA, retrieval: Retrieval, abstained: bool) -> str:
    verdict = f"abstained ({qa.abstain_on} below {qa.min_score:.2f})" if abstained else "answered"
    return (f"{qa.mode} retrieval {retrieval.ms:.0f} ms · closest cosine {retrieval.best_dense:.3f} · "
            f"coverage {retrieval.coverage:.2f} · {verdict}")  # fmt: skip


def notes_tab(qa: NotesQA, scheduler: Scheduler) -> Callable[[], None]:
    """A function that adds the tab inside the page's ``gr.Blocks`` (``build_ui(extra_tabs=[...])``)."""

    def add() -> None:
        with gr.Tab("Ask the course notes"):
            gr.Markdown("Answers come from the notes only, with numbered sources; when the notes do not cover a "
                        "question, it says so instead of guessing.")  # fmt: skip
            question = gr.Textbox(placeholder="e.g. Why is the first token slower than the others?", show_label=False,
                                  elem_id="notes-input")  # fmt: skip
            ask = gr.Button("Ask", variant="primary", elem_id="notes-send")
            answer = gr.Markdown(elem_id="notes-answer", min_height=80)
            stats = gr.Markdown(elem_id="notes-stats")
            sources = gr.HTML(elem_id="notes-sources")

            async def respond(text: str) -> AsyncIterator[tuple[str, str, str]]:
                if not text.strip():
                    yield "", "", ""
                    return
                retrieval, abstain = await run_in_threadpool(qa.retrieve, text)
                listed, found = sources_markdown(retrieval), retrieval_line(qa, retrieval, abstain)
                if abstain:
                    yield ABSTAIN, found, listed
                    return
                messages, params = qa.fit_context(text, retrieval)
                yield "", f"{found} · generating…", listed
                async for reply, reply_stats in stream_reply(scheduler, qa.engine, messages, params):
                    line = found if reply_stats is None else f"{found} · {reply_stats.line()}"
                    yield reply, line, listed

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
