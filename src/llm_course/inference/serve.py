"""``llm-course serve``: one process, one FastAPI app: the OpenAI-compatible API and the Gradio page."""

import ipaddress
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_course.errors import ConfigError
from llm_course.inference.engine import WEIGHT_FORMATS, GenerationEngine, Weights
from llm_course.inference.sampling import SamplingParams
from llm_course.inference.scheduler import Scheduler


def variant_id(model: str, weights: str, adapter: str | None) -> str:
    """The model id a variant is served under, e.g. ``smollm2-135m-instruct:nf4`` or ``...:fp32+adapter``."""
    name = Path(model.rstrip("/")).name
    return f"{name}:{weights}" + (f"+{Path(adapter.rstrip('/')).name}" if adapter else "")


def load_variants(
    model: str, adapter: str | None, weights: str, compare_weights: list[str], compare_adapter: str | None,
    device: str, trust_remote_code: bool,
) -> dict[str, GenerationEngine]:  # fmt: skip
    """The main variant, then one per extra weight format, then the main one with ``compare_adapter``."""
    for w in [weights, *compare_weights]:
        if w not in WEIGHT_FORMATS:
            raise ConfigError(f"weights {w!r} is not one of: {', '.join(WEIGHT_FORMATS)}")
    specs = [(weights, adapter)] + [(w, adapter) for w in compare_weights]
    if compare_adapter:
        specs.append((weights, compare_adapter))
    engines: dict[str, GenerationEngine] = {}
    for w, a in specs:
        key = variant_id(model, w, a)
        if key not in engines:
            engines[key] = GenerationEngine.load(model, a, w, device, trust_remote_code)
            engines[key].warm_up()
            print(f"loaded {key}: {engines[key].describe()}", file=sys.stderr)
    return engines


def check_host(host: str) -> None:
    """Warn when ``host`` is not a loopback address: the server then answers anyone who can reach this machine."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        print(f"warning: --host {host} exposes the server (and the model) beyond this machine, with no "
              "authentication; use 127.0.0.1 unless you mean it", file=sys.stderr)  # fmt: skip


def build_server(engines: dict[str, GenerationEngine], scheduler: Scheduler, defaults: SamplingParams,
                 ui: bool = True, notes_qa: Any | None = None) -> Any:  # fmt: skip
    """The FastAPI app with the API routes and, if ``ui``, the Gradio page mounted at ``/``; with ``notes_qa`` (a
    :class:`~llm_course.rag.answer.NotesQA`), the page's "Ask the course notes" tab and the cited files."""
    from llm_course.inference.api import build_app

    app = build_app(engines, scheduler, defaults)
    extra_tabs: list[Callable[[], None]] = []
    if notes_qa is not None:
        from llm_course.rag.webui import add_source_route, notes_tab

        add_source_route(app, notes_qa)
        extra_tabs.append(notes_tab(notes_qa, scheduler))
    if ui:
        import gradio as gr

        from llm_course.inference.webui import THEME, build_ui

        demo = build_ui(engines, scheduler, defaults, extra_tabs)
        app = gr.mount_gradio_app(app, demo, path="/", theme=THEME, ssr_mode=False, footer_links=[])
    return app


def serve(
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    weights: Weights = "fp32",
    compare_weights: list[Weights] | None = None,
    compare_adapter: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    queue_size: int = 64,
    ui: bool = True,
    temperature: float = 0.7,
    top_k: int = 50,
    top_p: float = 0.95,
    repetition_penalty: float = 1.0,
    max_new_tokens: int = 256,
    device: str = "auto",
    trust_remote_code: bool = False,
    notes: str | None = None,
    notes_index: str = "outputs/rag_index",
    notes_answer: str = "extractive",
    notes_adapter: str | None = None,
) -> None:
    """Serve the model: a Gradio chat page at / and an OpenAI-compatible API at /v1 (chat/completions, models),
    with /health; one process, models loaded once at start-up.

    Args:
        model: embedded name (smollm2-135m-instruct), hub id, model folder (e.g. from llm-course merge), or a LoRA
            adapter folder from Module 6.
        adapter: a LoRA adapter folder to apply on top of --model.
        weights: fp32, bf16, int8 or nf4.
        compare_weights: more weight formats of the same model to serve beside it (e.g. [nf4]), for the
            page's compare mode and as extra API models.
        compare_adapter: also serve --model with this LoRA adapter (base vs tuned in compare mode).
        host: address to bind; 127.0.0.1 keeps the server on this machine (anything else prints a warning).
        port: TCP port.
        queue_size: requests that may wait for the model; one more gets HTTP 429 with Retry-After.
        ui: serve the Gradio page (false: the API only).
        temperature: default when a request sets none.
        top_k: default when a request sets none.
        top_p: default when a request sets none.
        repetition_penalty: default when a request sets none.
        max_new_tokens: default reply length when a request sets none.
        device: auto, cpu, cuda or cuda:N.
        trust_remote_code: allow model code from the hub (off unless you trust the repo).
        notes: a folder of notes (e.g. notes) for the page's "Ask the course notes" tab (Module 8), answered by the
            first model; indexed into --notes_index, re-embedding only files that changed.
        notes_index: where that index is kept.
        notes_answer: how the notes tab answers: extractive (the notes' own sentences), generate or both (the
            model's sentences too, each checked against the passages); see ``rag ask --answer``.
        notes_adapter: the grounded-answer LoRA adapter (configs/rag_lora.yaml) the notes tab answers with, on top
            of --model; the chat's --adapter is another model. None: the first served model.
    """
    import uvicorn

    if queue_size < 0:
        raise ConfigError(f"--queue_size={queue_size} must be >= 0")
    check_host(host)
    defaults = SamplingParams(temperature, top_k, top_p, repetition_penalty, max_new_tokens)
    defaults.check(0, 1 << 30)
    engines = load_variants(model, adapter, weights, compare_weights or [], compare_adapter, device,
                            trust_remote_code)  # fmt: skip
    notes_qa = None
    if notes is not None:
        from llm_course.rag.answer import NotesQA
        from llm_course.rag.commands import open_index
        from llm_course.rag.retrieve import Retriever

        built, embedder = open_index(notes, notes_index)  # an existing index keeps its embedder and chunk settings
        notes_engine = next(iter(engines.values()))
        if notes_adapter is not None:
            from llm_course.inference.engine import GenerationEngine

            notes_engine = GenerationEngine.load(model, notes_adapter, weights, device, trust_remote_code)
        notes_qa = NotesQA(Retriever(built, embedder), notes_engine, answer=notes_answer)
    app = build_server(engines, Scheduler(queue_size), defaults, ui, notes_qa)
    print(f"serving {', '.join(engines)} at http://{host}:{port}/ (API: http://{host}:{port}/v1)", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")
