"""``llm-course serve``: one process, one FastAPI app: the OpenAI-compatible API and the Gradio page."""

import hmac
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_course.agent.commands import PolicyName
from llm_course.agent.desk.orders import DEFAULT_DB
from llm_course.errors import ConfigError
from llm_course.inference.engine import WEIGHT_FORMATS, GenerationEngine, Weights
from llm_course.inference.guard import host_names, is_loopback
from llm_course.inference.sampling import SamplingParams
from llm_course.inference.scheduler import MAX_BATCH_SIZE, MAX_BATCH_TOKENS, Limits, Scheduler, at_least


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


def check_host(host: str, api_key: str | None = None, allow_unauthenticated: bool = False) -> None:
    """Refuse to bind a non-loopback ``host`` without an API key (anyone who can reach this machine could use the
    model) unless ``allow_unauthenticated``; then only warn.

    Raises:
        ConfigError: ``host`` is not a loopback address, there is no key, and no explicit opt-out.
    """
    if is_loopback(host) or api_key:
        return
    if not allow_unauthenticated:
        raise ConfigError(f"--host={host} exposes the server beyond this machine with no API key: set --api_key (or "
                          "the LLM_COURSE_API_KEY environment variable), bind --host=127.0.0.1, or pass "
                          "--allow_unauthenticated=true if anyone who can reach it may use it")  # fmt: skip
    print(f"warning: --host {host} exposes the server (and the model) beyond this machine, with no "
          "authentication (--allow_unauthenticated)", file=sys.stderr)  # fmt: skip


def build_server(engines: dict[str, GenerationEngine], scheduler: Scheduler, defaults: SamplingParams,
                 ui: bool = True, notes_qa: Any | None = None, api_key: str | None = None,
                 max_body_bytes: int = 1_000_000, allowed_hosts: set[str] | None = None,
                 desk: Any | None = None) -> Any:  # fmt: skip
    """The FastAPI app with the API routes and, if ``ui``, the Gradio page mounted at ``/``; with ``notes_qa`` (a
    :class:`~llm_course.rag.answer.NotesQA`), the page's "Ask the course notes" tab and the cited files; with
    ``desk`` (a :class:`~llm_course.agent.desk.desk.SupportDesk`), its "Support desk" tab.

    With ``api_key``, ``/v1`` needs it as a Bearer token and the page asks for it at a login form (any user name,
    the key as the password), so the page is no way around the key. ``allowed_hosts``: the Host names answered
    (:func:`~llm_course.inference.guard.host_names`; ``None``: any)."""
    from llm_course.inference.api import build_app

    app = build_app(engines, scheduler, defaults, api_key, max_body_bytes, allowed_hosts)
    extra_tabs: dict[str, Callable[[], None]] = {}
    if notes_qa is not None:
        from llm_course.rag.webui import add_source_route, notes_tab

        add_source_route(app, notes_qa)
        extra_tabs["ask the notes"] = notes_tab(notes_qa, scheduler)
    if desk is not None:
        from llm_course.agent.desk.webui import desk_tab

        extra_tabs["support desk"] = desk_tab(desk)
    if ui:
        import gradio as gr

        from llm_course.inference.webui import THEME, build_ui

        login: dict[str, Any] = {}
        if api_key:
            login = {"auth": lambda _user, password: hmac.compare_digest(password.encode(), api_key.encode()),
                     "auth_message": "This server has an API key: any user name, the key as the password."}  # fmt: skip
        demo = build_ui(engines, scheduler, defaults, extra_tabs)
        app = gr.mount_gradio_app(app, demo, path="/", theme=THEME, ssr_mode=False, footer_links=[], **login)
    return app


def serve(
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    weights: Weights = "fp32",
    compare_weights: list[Weights] | None = None,
    compare_adapter: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    allow_unauthenticated: bool = False,
    allowed_hosts: list[str] | None = None,
    queue_size: int = 64,
    max_batch_size: int = MAX_BATCH_SIZE,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
    max_body_bytes: int = 1_000_000,
    max_messages: int = 256,
    max_prompt_chars: int = 200_000,
    max_prompt_tokens: int | None = None,
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
    support_desk: bool = False,
    support_policy: PolicyName = "model",
    support_classifier: str | None = None,
    support_db: str = DEFAULT_DB,
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
        host: address to bind; 127.0.0.1 keeps the server on this machine. Any other address needs --api_key
            (or --allow_unauthenticated=true).
        port: TCP port.
        api_key: the key clients send as ``Authorization: Bearer KEY`` (the page asks for it too); default: the
            LLM_COURSE_API_KEY environment variable (better: a command line is visible to every user of the machine).
        allow_unauthenticated: serve a non-loopback --host without a key (anyone who reaches it may use it).
        allowed_hosts: more Host names to answer (e.g. the name a proxy forwards); a loopback server answers only
            loopback names (DNS rebinding), a 0.0.0.0 server any name unless this is given.
        queue_size: requests that may wait beyond the free batch slots; one more gets HTTP 429 with Retry-After.
        max_batch_size: replies decoding together in one batch (1 = one at a time).
        max_batch_tokens: cache positions (rows × tokens) a batch may hold: bounds the KV cache's memory.
        max_body_bytes: the largest request body (413 beyond).
        max_messages: messages per request.
        max_prompt_chars: characters per request, all messages together (checked before tokenizing).
        max_prompt_tokens: tokens per rendered prompt (None: the model's context length).
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
        support_desk: add the page's "Support desk" tab (``llm-course support`` of Module 8: sentiment, tool trace,
            cited reply or hand-over). Off by default: building the desk takes seconds at start-up (MiniLM, the
            help-centre index, the fallback sentiment head, the call grammar).
        support_policy: who chooses the desk's tool: model (the first served model, the same loaded copy: its
            calls take turns with the chat's batches) or keywords (the keyword rules, no model).
        support_classifier: the desk's sentiment classifier, a Module 3 hf_model or ONNX export folder (none: the
            offline fallback head on MiniLM embeddings).
        support_db: the desk's orders database (SQLite; created and seeded on first use).
    """
    import uvicorn

    api_key = api_key or os.environ.get("LLM_COURSE_API_KEY") or None
    check_host(host, api_key, allow_unauthenticated)
    if support_desk and not ui:
        raise ConfigError("--support_desk=true adds a tab to the page, which --ui=false turns off: drop one of them")
    at_least(1, max_body_bytes=max_body_bytes)
    limits = Limits(max_messages, max_prompt_chars, max_prompt_tokens)
    scheduler = Scheduler(queue_size, max_batch_size, max_batch_tokens=max_batch_tokens, limits=limits)
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
    desk = None
    if support_desk:
        from llm_course.agent.commands import build_desk

        start = time.perf_counter()
        desk = build_desk(support_policy, next(iter(engines.values())), classifier=support_classifier, db=support_db)
        print(f"support desk: {desk.policy.label}, built in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    app = build_server(engines, scheduler, defaults, ui, notes_qa, api_key, max_body_bytes,
                       host_names(host, allowed_hosts or []), desk)  # fmt: skip
    print(f"serving {', '.join(engines)} at http://{host}:{port}/ (API: http://{host}:{port}/v1)", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")
