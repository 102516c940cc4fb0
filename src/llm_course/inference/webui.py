"""The Gradio page of ``llm-course serve``: a streaming chat and a side-by-side compare of two loaded variants (and
the tabs that Module 8 adds: the notes, the support desk).

Under each reply: time to first token, decode tokens/s, latency and memory. The handlers submit to the same
:class:`~llm_course.inference.scheduler.Scheduler` as the HTTP API, so the page and the API share one queue and one
batch; Gradio's own queue lets every event through at once (``concurrency_limit=None``) and the scheduler decides.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr

from llm_course.inference.engine import GenerationEngine, ReplyStats
from llm_course.inference.sampling import InvalidRequest, SamplingParams
from llm_course.inference.scheduler import QueueFull, Scheduler, pieces

UPDATE_S = 0.25
# System fonts: the default theme fetches Google Fonts, which an offline machine cannot reach.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def text_of(content: Any) -> str:
    """The text of a Chatbot message's content (a string, or Gradio 6's list of ``{"type": "text"}`` blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "")
    return "".join(text_of(part) for part in content or [])


def stats_markdown(name: str, engine: GenerationEngine, stats: ReplyStats | None) -> str:
    """The line under a reply: the variant, its weights' size, and the reply's timings (``None``: still running)."""
    if stats is None:
        return "generating…"
    return f"**{name}** ({engine.weights_mb:,.1f} MiB of weights) · {stats.line()}"


def sampling_controls(defaults: SamplingParams, max_tokens: int) -> list[gr.components.Component]:
    """Sliders for the sampling settings, in :class:`SamplingParams` order (seed -1 = a new draw each time)."""
    return [
        gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="temperature", info="0 = greedy"),
        gr.Slider(0, 200, value=defaults.top_k, step=1, label="top_k", info="0 = no limit"),
        gr.Slider(0.05, 1, value=defaults.top_p, step=0.01, label="top_p", info="1 = no limit"),
        gr.Slider(1, 2, value=defaults.repetition_penalty, step=0.05, label="repetition_penalty", info="1 = off"),
        gr.Slider(1, max_tokens, value=min(defaults.max_new_tokens, max_tokens), step=1, label="max_new_tokens"),
        gr.Number(value=-1 if defaults.seed is None else defaults.seed, precision=0, label="seed (-1 = random)"),
    ]


def params_of(temperature: float, top_k: float, top_p: float, penalty: float, max_new: float,
              seed: float | None) -> SamplingParams:  # fmt: skip
    seed = None if seed is None or seed < 0 else int(seed)
    return SamplingParams(float(temperature), int(top_k), float(top_p), float(penalty), int(max_new), seed)


async def stream_reply(scheduler: Scheduler, engine: GenerationEngine, messages: list[dict[str, str]],
                       params: SamplingParams) -> AsyncIterator[tuple[str, ReplyStats | None]]:  # fmt: skip
    """Yield (text so far, None) while generating, then (text, stats); queue and input errors become gr.Error.

    The page is updated at most every ``UPDATE_S`` seconds: each update re-sends the reply, and on a small CPU the
    browser's rendering would otherwise take time from the model."""
    try:
        generation = await scheduler.start(engine, messages, params)
    except (InvalidRequest, QueueFull) as err:
        raise gr.Error(str(err)) from err
    shown = 0.0
    async for _ in pieces(generation):
        if time.monotonic() - shown >= UPDATE_S:
            shown = time.monotonic()
            yield generation.text, None
    yield generation.text, generation.stats


async def interleave(streams: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    """``(index, item)`` from several async iterators as their items come (compare mode reads both replies at
    once); the first error is raised, and leaving early closes them all."""
    queue: asyncio.Queue[tuple[int, Any, BaseException | None, bool]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[Any]) -> None:
        try:
            async for item in stream:
                await queue.put((i, item, None, False))
        except Exception as err:
            await queue.put((i, None, err, True))
        else:
            await queue.put((i, None, None, True))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            i, item, error, finished = await queue.get()
            if error is not None:
                raise error
            if finished:
                left -= 1
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def build_ui(
    engines: dict[str, GenerationEngine],
    scheduler: Scheduler,
    defaults: SamplingParams,
    extra_tabs: dict[str, Callable[[], None]] | None = None,
) -> gr.Blocks:
    """The page: a Chat tab, a Compare tab and, from ``extra_tabs``, tabs that other modules add (the notes, the
    support desk), each under the name the heading lists it by."""
    names = list(engines)
    extra_tabs = extra_tabs or {}
    max_tokens = min(2048, *(e.context_length for e in engines.values()))
    with gr.Blocks(title="llm-course: chat", analytics_enabled=False) as demo:
        gr.Markdown(f"## llm-course · the LLM pipeline course: {', '.join(['chat', 'compare', *extra_tabs])}")
        with gr.Accordion("sampling", open=True):
            with gr.Row():
                controls = sampling_controls(defaults, max_tokens)
        with gr.Tab("Chat"):
            model = gr.Dropdown(names, value=names[0], label="model")
            chatbot = gr.Chatbot(elem_id="chatbot", height=380, label="conversation")
            stats = gr.Markdown(elem_id="chat-stats")
            message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, elem_id="chat-input")
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="chat-send")
                clear = gr.Button("Clear")
        with gr.Tab("Compare"):
            gr.Markdown("One prompt, two variants (e.g. fp32 vs nf4, or base vs LoRA adapter), answered at once.")
            prompt = gr.Textbox(placeholder="A prompt for both", show_label=False, elem_id="compare-input")
            run = gr.Button("Compare", variant="primary", elem_id="compare-send")
            outputs = []
            with gr.Row():
                for side, default in (("a", names[0]), ("b", names[min(1, len(names) - 1)])):
                    with gr.Column():
                        outputs.append(gr.Dropdown(names, value=default, label=f"variant {side.upper()}"))
                        outputs.append(gr.Markdown(elem_id=f"compare-reply-{side}", min_height=120))
                        outputs.append(gr.Markdown(elem_id=f"compare-stats-{side}"))
        for add_tab in extra_tabs.values():
            add_tab()

        async def respond(text: str, history: list[dict[str, Any]], name: str, *settings: Any) -> AsyncIterator:
            if not text.strip():
                yield "", history, ""
                return
            messages = [{"role": m["role"], "content": text_of(m["content"])} for m in history]
            messages.append({"role": "user", "content": text})
            history = [*messages, {"role": "assistant", "content": ""}]
            async for reply, reply_stats in stream_reply(scheduler, engines[name], messages, params_of(*settings)):
                history[-1] = {"role": "assistant", "content": reply}
                yield "", history, stats_markdown(name, engines[name], reply_stats)

        async def compare(text: str, name_a: str, name_b: str, *settings: Any) -> AsyncIterator:
            messages = [{"role": "user", "content": text}]
            shown = ["", "", "", ""]  # reply A, stats A, reply B, stats B
            names = (name_a, name_b)
            streams = [stream_reply(scheduler, engines[n], messages, params_of(*settings)) for n in names]
            async for i, (reply, reply_stats) in interleave(streams):  # both submitted: they batch (or take turns)
                shown[2 * i] = reply
                shown[2 * i + 1] = stats_markdown(names[i], engines[names[i]], reply_stats)
                yield tuple(shown)

        chat_inputs = [message, chatbot, model, *controls]
        unlimited = {"concurrency_limit": None}  # the scheduler bounds the work, not Gradio's queue
        message.submit(respond, chat_inputs, [message, chatbot, stats], **unlimited)
        send.click(respond, chat_inputs, [message, chatbot, stats], **unlimited)
        clear.click(lambda: ([], ""), None, [chatbot, stats])
        side_a, side_b = outputs[0], outputs[3]
        run.click(compare, [prompt, side_a, side_b, *controls], [outputs[1], outputs[2], outputs[4], outputs[5]],
                  **unlimited)  # fmt: skip
    return demo
