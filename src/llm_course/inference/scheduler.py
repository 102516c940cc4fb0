"""The serving scheduler: the one place that decides what computes.

The API, the chat page, compare mode and the RAG tab submit requests here and read their streams. Requests wait in
one bounded FIFO queue (``queue_size`` beyond the free batch slots; one more gets :class:`QueueFull`, a 429 with
Retry-After). One decode thread takes them into batches of at most ``max_batch_size`` rows and runs the decode
steps: a request joins the running rows before their next step (continuous batching, :mod:`.batching`) and leaves
as soon as it is done. Several models (compare mode) each have a batch, and the batches take turns step by step.

Before any work a request passes cheap caps (:class:`Limits`: messages, characters); its chat template and
tokenization then run once, in a worker thread, so the event loop (and ``/health``) keeps answering while a long
prompt is tokenized. A request cancelled while it waits (its client went away) leaves the queue at once; one
cancelled while it runs leaves its batch at the next step, and its slot is free once the decode thread has let go.
"""

import threading
import traceback
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import torch
from fastapi.concurrency import run_in_threadpool

from llm_course.errors import ConfigError
from llm_course.inference.batching import DecodeBatch
from llm_course.inference.engine import GenerationEngine
from llm_course.inference.request import Constraint, Generation
from llm_course.inference.sampling import InvalidRequest, SamplingParams

MAX_BATCH_SIZE = 16  # rows decoding at once: the default is measured (notes/07)
MAX_BATCH_TOKENS = 32_768  # cache positions (rows × columns) a batch may reach: its KV-cache memory
PREFILL_TOKENS = 512  # prompt tokens prefilled in one pass before the running rows get their next step


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""

    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(f"the server is busy: {waiting} requests are waiting; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def at_least(minimum: int, **values: int | None) -> None:
    """Raise a :class:`ConfigError` naming the flag whose value is below ``minimum`` (``None`` passes)."""
    for name, value in values.items():
        if value is not None and value < minimum:
            raise ConfigError(f"--{name}={value} must be >= {minimum}")


@dataclass(frozen=True)
class Limits:
    """Caps on one request, checked before any tokenization (the characters) or right after it (the tokens).

    Attributes:
        max_messages: messages in one conversation.
        max_prompt_chars: characters in all its messages together.
        max_prompt_tokens: tokens of the rendered prompt (``None``: the model's context length).
    """

    max_messages: int = 256
    max_prompt_chars: int = 200_000
    max_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        at_least(1, max_messages=self.max_messages, max_prompt_chars=self.max_prompt_chars,
                 max_prompt_tokens=self.max_prompt_tokens)  # fmt: skip

    def check(self, messages: list[dict[str, str]]) -> None:
        if len(messages) > self.max_messages:
            raise InvalidRequest(f"messages has {len(messages)} entries; this server takes at most "
                                 f"{self.max_messages} (--max_messages)", param="messages")  # fmt: skip
        chars = sum(len(m["content"]) for m in messages)
        if chars > self.max_prompt_chars:
            raise InvalidRequest(f"the messages have {chars:,} characters; this server takes at most "
                                 f"{self.max_prompt_chars:,} (--max_prompt_chars)", param="messages",
                                 code="context_length_exceeded")  # fmt: skip


class Scheduler:
    """A bounded queue in front of the models and the decode thread that batches what it admits.

    Args:
        queue_size: requests that may wait beyond the free batch slots.
        max_batch_size: rows decoding at once, over all models.
        retry_after_s: the Retry-After of a :class:`QueueFull`.
        max_batch_tokens: cache positions (rows × columns, prompt and reply) a batch may reach; a request that
            would pass it waits for rows to finish (alone, any request that fits the model's context runs).
        limits: caps on each request (:class:`Limits`).

    Raises:
        ConfigError: a size below 1.
    """

    def __init__(self, queue_size: int = 64, max_batch_size: int = MAX_BATCH_SIZE, retry_after_s: int = 2,
                 max_batch_tokens: int = MAX_BATCH_TOKENS, limits: Limits | None = None) -> None:  # fmt: skip
        at_least(1, queue_size=queue_size, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens)
        self.queue_size, self.max_batch_size, self.retry_after_s = queue_size, max_batch_size, retry_after_s
        self.max_batch_tokens, self.limits = max_batch_tokens, limits or Limits()
        self.running = 0  # rows admitted and not yet finished
        self.finished: Counter[str] = Counter()  # replies by finish reason: stop, length, cancelled, error
        self._queue: deque[Generation] = deque()
        self._batches: dict[int, DecodeBatch] = {}  # by id(engine)
        self._lock, self._work = threading.Lock(), threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def snapshot(self) -> dict[str, Any]:
        """The queue as ``/health`` shows it."""
        with self._lock:
            queue = {"waiting": len(self._queue), "running": self.running, "queue_size": self.queue_size,
                     "max_batch_size": self.max_batch_size}  # fmt: skip
            return {"queue": queue, "finished": dict(self.finished)}

    async def start(self, engine: GenerationEngine, messages: list[dict[str, str]], params: SamplingParams,
                    constraint: Callable[[], Constraint] | None = None) -> Generation:  # fmt: skip
        """Check and tokenize the request (in a worker thread), then queue it; returns at once, before it runs.
        ``constraint`` makes the reply's constraint (a grammar to compile) in that worker thread, after the checks.

        Raises:
            InvalidRequest: a cap, a sampling value or the context length is exceeded (or ``constraint`` raises it).
            QueueFull: the queue is full (checked before tokenizing, and again after).
        """
        self.limits.check(messages)
        self._check_room()

        def prepare() -> tuple[list[int], Constraint | None]:
            ids = engine.check(messages, params, self.limits.max_prompt_tokens)
            return ids, constraint() if constraint is not None else None

        ids, made = await run_in_threadpool(prepare)
        return self.submit(engine, ids, params, made)

    def submit(self, engine: GenerationEngine, prompt_ids: list[int], params: SamplingParams,
               constraint: Constraint | None = None) -> Generation:  # fmt: skip
        """Queue a checked request (token ids from ``engine.check``); the decode thread admits it."""
        generation = Generation(engine, prompt_ids, params, constraint)
        generation.on_cancel = self._withdraw
        with self._lock:
            self._check_room()
            self._queue.append(generation)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="decode", daemon=True)
                self._thread.start()
        self._work.set()
        return generation

    def close(self) -> None:
        """Stop the decode thread once it is between steps (for tests and shutdown)."""
        self._closed = True
        self._work.set()
        if self._thread is not None:
            self._thread.join(30)

    def _check_room(self) -> None:
        free_slots = max(0, self.max_batch_size - self.running)
        if len(self._queue) - free_slots >= self.queue_size:
            raise QueueFull(len(self._queue), self.retry_after_s)

    def _withdraw(self, generation: Generation) -> None:
        """A cancelled request leaves the queue now if it waits (if it runs, its batch drops it at the next step)."""
        with self._lock:
            if generation not in self._queue:
                self._work.set()  # running: let the decode thread drop it even if it is idle between ticks
                return
            self._queue.remove(generation)
            self.finished["cancelled"] += 1
        generation.finish("cancelled")

    def _finished(self, generation: Generation) -> None:
        with self._lock:
            self.running -= 1
            self.finished["error" if generation.error else generation.stats.finish_reason] += 1

    # --- the decode thread ---

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._closed:
                self._work.wait()
                self._work.clear()
                try:
                    while not self._closed and self._tick():
                        pass
                except Exception as err:  # a bug in the scheduling itself: fail every reply rather than hang them
                    traceback.print_exc()
                    self._fail_all(err)

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            waiting, self._queue = list(self._queue), deque()
            self.finished["error"] += len(waiting)
        for generation in waiting:
            generation.finish("error", error)
        for batch in self._batches.values():
            batch.fail(error)

    def _tick(self) -> bool:
        """Admit what fits (one prefill group per model), then one decode step per model; False when idle."""
        busy = False
        for batch, group in self._admit():
            self._compute(batch, group)
            busy = True
        for batch in list(self._batches.values()):
            if batch.rows:
                self._compute(batch)
                busy = True
        return busy

    def _compute(self, batch: DecodeBatch, group: list[Generation] | None = None) -> None:
        try:
            with batch.engine.lock:
                if group:
                    batch.add(group)
                else:
                    batch.step()
        except Exception as err:  # the replies in this batch fail (their readers see the error); the server goes on
            batch.fail(err, group or [])

    def _admit(self) -> list[tuple[DecodeBatch, list[Generation]]]:
        groups: dict[int, tuple[DecodeBatch, list[Generation]]] = {}
        with self._lock:
            while self._queue and self.running < self.max_batch_size:
                head = self._queue[0]
                batch = self._batches.get(id(head.engine))
                if batch is None:
                    batch = self._batches[id(head.engine)] = DecodeBatch(head.engine, on_finish=self._finished)
                group = groups.setdefault(id(batch), (batch, []))[1]
                if not self._fits(batch, group, head):
                    break  # first come, first served: nothing overtakes the head of the queue
                group.append(self._queue.popleft())
                self.running += 1
        return [(batch, group) for batch, group in groups.values() if group]

    def _fits(self, batch: DecodeBatch, group: list[Generation], new: Generation) -> bool:
        if not batch.rows and not group:
            return True  # alone, anything that fits the model's context runs
        if not batch.joinable:
            return False
        if group and sum(len(g.prompt_ids) for g in group) + len(new.prompt_ids) > PREFILL_TOKENS:
            return False
        return batch.tokens_with([*group, new]) <= self.max_batch_tokens


async def pieces(generation: Generation) -> AsyncIterator[str]:
    """The reply's text pieces, read without blocking the event loop; leaving early (a client gone, an error)
    cancels the generation, which frees its place in the queue or in its batch."""
    try:
        async for piece in generation:
            yield piece
    finally:
        generation.cancel()  # no effect once it has finished
