"""An OpenAI-compatible HTTP API over the generation engines: ``/v1/chat/completions``, ``/v1/models``, ``/health``.

Any OpenAI client (the official ``openai`` package, LangChain, curl) talks to it unchanged. Every error, bad input
(4xx) or a failure of ours (500), is answered in OpenAI's error shape ``{"error": {"message", "type", "param",
"code"}}``, never echoing the whole input, and the server keeps serving. :class:`~.guard.Guard` checks the Host, the
API key and the body size before a route runs; a client that goes away (while its request waits or while it is
answered, streaming or not) cancels its reply, which frees its place.

Function calling follows OpenAI's: ``tools``, ``tool_choice`` (``auto``, ``none``, ``required`` or a named function)
and ``parallel_tool_calls`` in; ``tool_calls`` out, whole or streamed as ``delta.tool_calls``; assistant messages with
``tool_calls`` and ``tool`` messages in the next request. A call decodes under a grammar of the tools' schemas
(llguidance, the ``[agent]`` extra), so it always parses and names a real tool; a reply holds at most one call
(:mod:`.functions`).
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import format_sse_event
from pydantic import BaseModel, Field, model_validator

from llm_course.inference.engine import GenerationEngine
from llm_course.inference.functions import ReplyReader, ToolCall, ToolSpec, call_constraint, plan_tools, prompt_messages
from llm_course.inference.guard import Guard
from llm_course.inference.request import Generation
from llm_course.inference.sampling import InvalidRequest, SamplingParams
from llm_course.inference.scheduler import QueueFull, Scheduler, pieces

Receive = Callable[[], Awaitable[dict[str, Any]]]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None  # None only beside tool_calls
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers

    @model_validator(mode="after")
    def complete(self) -> "Message":
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs tool_call_id, the id of the call it answers")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is missing (it may be null only in an assistant message with tool_calls)")
        return self

    def plain(self) -> dict[str, Any]:
        text = self.content if isinstance(self.content, str | None) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text,
                "tool_calls": self.tool_calls, "tool_call_id": self.tool_call_id}  # fmt: skip


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat completion request that a local model can honour (others are ignored),
    plus ``top_k`` and ``repetition_penalty`` as extensions. Ranges are checked by :class:`SamplingParams`, tools by
    :func:`~.functions.plan_tools`; ``parallel_tool_calls`` is accepted, but a reply holds at most one call."""

    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None  # checked by plan_tools, which names what is wrong
    parallel_tool_calls: bool | None = None


class UnknownModel(Exception):
    pass


def clip(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message names the input, it does not echo it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            return error_response(400, f"the request body is not valid JSON: {first.get('msg')}", code="invalid_json")
        where = field_path(tuple(first.get("loc", ())))
        return error_response(400, f"{where}: {first.get('msg')} (got {clip(first.get('input'))})", param=where)

    @app.exception_handler(InvalidRequest)
    async def invalid_request(request: Request, err: InvalidRequest) -> JSONResponse:
        return error_response(400, str(err), param=err.param, code=err.code)

    @app.exception_handler(UnknownModel)
    async def unknown_model(request: Request, err: UnknownModel) -> JSONResponse:
        return error_response(404, str(err), param="model", code="model_not_found")

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, err: QueueFull) -> JSONResponse:
        return error_response(429, str(err), kind="rate_limit_error", code="queue_full",
                              headers={"Retry-After": str(err.retry_after_s)})  # fmt: skip

    async def http_error(request: Request, err: Exception) -> JSONResponse:  # Starlette's and FastAPI's HTTPException
        status = getattr(err, "status_code", 500)
        return error_response(status, str(getattr(err, "detail", err)), headers=getattr(err, "headers", None))

    for status in (400, 404, 405):  # an unknown route or method, a body FastAPI cannot read
        app.add_exception_handler(status, http_error)

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:  # a bug: still OpenAI's shape
        return error_response(500, f"the server failed: {type(err).__name__}: {clip(str(err), 300)}",
                              kind="server_error")  # fmt: skip


def sampling_params(body: ChatRequest, defaults: SamplingParams) -> SamplingParams:
    """The request's settings over the server's defaults; ``max_completion_tokens`` wins over ``max_tokens``."""
    if body.n != 1:
        raise InvalidRequest(f"n={body.n}: this server returns one choice per request (n=1)", param="n")
    given = {
        "temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
        "repetition_penalty": body.repetition_penalty, "seed": body.seed,
        "max_new_tokens": body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
    }  # fmt: skip
    return SamplingParams(**(defaults.as_dict() | {k: v for k, v in given.items() if v is not None}))


@asynccontextmanager
async def cancelled_on_disconnect(receive: Receive, generation: Generation) -> AsyncIterator[None]:
    """While the block runs, a disconnect of the client cancels ``generation`` (waiting: it leaves the queue;
    running: it stops at the next decode step), so no reply is computed for nobody."""

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        generation.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


def build_app(engines: dict[str, GenerationEngine], scheduler: Scheduler, defaults: SamplingParams,
              api_key: str | None = None, max_body_bytes: int = 1_000_000,
              allowed_hosts: set[str] | None = None) -> FastAPI:  # fmt: skip
    """The FastAPI app: ``engines`` by model id (the first is the default), one ``scheduler`` for all of them;
    ``api_key``, ``max_body_bytes`` and ``allowed_hosts`` go to :class:`~.guard.Guard`."""
    app = FastAPI(title="llm-course", description="OpenAI-compatible chat API of the course's generation engine")
    install_error_handlers(app)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes, allowed_hosts=allowed_hosts)
    created = int(time.time())
    app.state.engines, app.state.scheduler, app.state.defaults = engines, scheduler, defaults

    def engine_for(name: str) -> GenerationEngine:
        if name not in engines:
            raise UnknownModel(f"model={clip(name)} is not served here; models: {', '.join(engines)} (GET /v1/models)")
        return engines[name]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(engines), **scheduler.snapshot()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": name, "object": "model", "created": created, "owned_by": "llm-course"} for name in engines]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> JSONResponse | StreamingResponse:
        engine = engine_for(body.model)
        params = sampling_params(body, defaults)
        plan = plan_tools(body.tools, body.tool_choice)
        messages = prompt_messages([m.plain() for m in body.messages], plan)
        constraint = (lambda: call_constraint(plan, engine)) if plan.constrained else None
        generation = await scheduler.start(engine, messages, params, constraint)
        reply_id, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        reader = ReplyReader(may_call=plan.constrained)
        if body.stream:
            usage_chunk = body.stream_options is not None and body.stream_options.include_usage
            events = stream_events(generation, reply_id, now, body.model, usage_chunk, request.receive, reader)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        async with cancelled_on_disconnect(request.receive, generation):
            async for piece in pieces(generation):
                reader.feed(piece)
        reader.finish()
        choice = {"index": 0, "message": reader.message(),
                  "finish_reason": reader.finish_reason(finish_reason(generation))}  # fmt: skip
        return JSONResponse({"id": reply_id, "object": "chat.completion", "created": now, "model": body.model,
                             "choices": [choice], "usage": usage(generation),
                             "timings": generation.stats.as_dict()})  # fmt: skip

    return app


def finish_reason(generation: Generation) -> str:
    return "length" if generation.stats.finish_reason == "length" else "stop"


def usage(generation: Generation) -> dict[str, int]:
    s = generation.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
            "total_tokens": s.prompt_tokens + s.completion_tokens}  # fmt: skip


async def stream_events(generation: Generation, reply_id: str, created: int, model: str, include_usage: bool = False,
                        receive: Receive | None = None,
                        reader: ReplyReader | None = None) -> AsyncIterator[bytes]:  # fmt: skip
    """Server-sent events in OpenAI's streaming format: a role delta, content deltas (or ``tool_calls`` deltas: the
    call's id and name, then its arguments in pieces, as ``reader`` releases them), a chunk with the finish reason
    (and our ``timings``), with ``include_usage`` a last chunk with ``choices: []`` and the usage counts (every other
    chunk then has ``usage: null``, as OpenAI sends), then ``data: [DONE]``."""
    extra = {"usage": None} if include_usage else {}
    reader = reader or ReplyReader(may_call=False)

    def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
        data = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra, **more}  # fmt: skip
        return format_sse_event(data_str=json.dumps(data))

    async with cancelled_on_disconnect(receive, generation) if receive else nullcontext():
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for piece in pieces(generation):
                for delta in reader.feed(piece):
                    yield chunk(delta)
            for delta in reader.finish():
                yield chunk(delta)
        except Exception as err:  # the status line is sent already: report in the stream, as OpenAI does
            error = {"error": {"message": f"generation failed: {type(err).__name__}: {clip(str(err), 300)}",
                               "type": "server_error", "param": None, "code": None}}  # fmt: skip
            yield format_sse_event(data_str=json.dumps(error))
        else:
            yield chunk({}, reader.finish_reason(finish_reason(generation)), timings=generation.stats.as_dict())
            if include_usage:
                data = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": usage(generation)}  # fmt: skip
                yield format_sse_event(data_str=json.dumps(data))
        yield format_sse_event(data_str="[DONE]")
