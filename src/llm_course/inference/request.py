"""One reply's life, from the queue to its last token: a :class:`Generation`.

The decode loop (:mod:`llm_course.inference.batching`, driven by the server's scheduler or, for the terminal
commands, by a thread of its own) fills it; one reader takes its text pieces, with ``for`` in a thread or with
``async for`` in an event loop, then reads ``stats``. Waiting, running and finished are a :class:`Status`; why a reply
ended is a :data:`FinishReason`. A reply may carry a :class:`Constraint` (a grammar) that its batch row decodes under.
"""

import asyncio
import enum
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from llm_course.inference.sampling import SamplingParams
from llm_course.memory import current_mb, peak_mb

if TYPE_CHECKING:
    import torch

FinishReason = Literal["stop", "length", "cancelled", "error"]


class Constraint(Protocol):
    """Which tokens a reply may take next (e.g. :class:`~llm_course.agent.constrained.GrammarConstraint`): its batch
    row masks every other logit before sampling, then advances the constraint by the token it took."""

    def allowed(self, vocab_size: int) -> "torch.Tensor":  # a boolean mask over the vocabulary
        ...

    def advance(self, token: int) -> None: ...


class Status(enum.Enum):
    WAITING = "waiting"  # submitted, not yet in a batch
    RUNNING = "running"  # prefilled: its tokens come with every decode step
    FINISHED = "finished"


@dataclass
class ReplyStats:
    """What one reply cost. Times in seconds from submission (so the first token includes any wait in the queue);
    memory in MiB (process RSS; CUDA allocated and peak on a GPU)."""

    prompt_tokens: int
    completion_tokens: int = 0
    queued_s: float | None = None  # from submission to the start of its prefill
    time_to_first_token_s: float | None = None
    decode_tokens_per_s: float | None = None  # this reply's own rate, whatever else shares its batch
    latency_s: float = 0.0
    rss_mb: float = 0.0
    cuda_allocated_mb: float | None = None
    cuda_peak_mb: float | None = None
    finish_reason: FinishReason = "stop"  # stop: end of turn or a stop string; length: max_new_tokens

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def line(self) -> str:
        """One human-readable line: first token, tokens/s, latency, memory."""
        ttft = "n/a" if self.time_to_first_token_s is None else f"{self.time_to_first_token_s:.2f} s"
        speed = "n/a" if self.decode_tokens_per_s is None else f"{self.decode_tokens_per_s:.1f} tokens/s"
        memory = f"{self.rss_mb:,.0f} MiB RSS"
        if self.cuda_peak_mb is not None:
            memory += f", CUDA {self.cuda_allocated_mb:,.0f} MiB allocated / {self.cuda_peak_mb:,.0f} MiB peak"
        return (f"first token {ttft} · {speed} · {self.completion_tokens} tokens in {self.latency_s:.2f} s · "
                f"{memory} · {self.finish_reason}")  # fmt: skip


class Generation:
    """One reply: its prompt ids, settings and optional ``constraint``, the text pieces decoded so far, and its stats
    once finished.

    ``cancel()`` takes it out of the queue, or stops it at the next decode step; ``on_cancel`` is the scheduler's
    hook for the first case. Written by the decode loop's thread, read by one consumer.
    """

    def __init__(self, engine: Any, prompt_ids: list[int], params: SamplingParams,
                 constraint: Constraint | None = None) -> None:  # fmt: skip
        self.engine, self.prompt_ids, self.params, self.constraint = engine, prompt_ids, params, constraint
        self.stats = ReplyStats(prompt_tokens=len(prompt_ids))
        self.status = Status.WAITING
        self.text, self.error = "", None
        self.token_ids: list[int] = []
        self.token_times: list[float] = []
        self.submitted = time.perf_counter()
        self.on_cancel: Callable[[Generation], None] | None = None
        self._cancelled = threading.Event()
        self._pieces: deque[str] = deque()
        self._changed = threading.Condition()
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self.status is Status.FINISHED

    def cancel(self) -> None:
        """Stop this reply (no effect once it has finished)."""
        if self.done or self._cancelled.is_set():
            return
        self._cancelled.set()
        if self.on_cancel is not None:
            self.on_cancel(self)

    # --- the producer's side: the decode loop ---

    def started(self) -> None:
        self.status, self.stats.queued_s = Status.RUNNING, time.perf_counter() - self.submitted

    def push(self, piece: str) -> None:
        if piece:
            with self._changed:
                self._pieces.append(piece)
                self._changed.notify_all()
            self._wake()

    def finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        """Record why and when it ended and compute its stats; the reader then sees the end of the stream."""
        if self.done:
            return
        s, times, now = self.stats, self.token_times, time.perf_counter()
        s.latency_s, s.completion_tokens, s.finish_reason = now - self.submitted, len(times), reason
        if times:
            s.time_to_first_token_s = times[0] - self.submitted
        if len(times) > 1 and times[-1] > times[0]:
            s.decode_tokens_per_s = (len(times) - 1) / (times[-1] - times[0])
        s.rss_mb = current_mb("cpu")
        device = getattr(self.engine, "device", None)
        if device is not None and device.type == "cuda":
            s.cuda_allocated_mb, s.cuda_peak_mb = current_mb(device), peak_mb(device)
        with self._changed:
            self.error, self.status = error, Status.FINISHED
            self._changed.notify_all()
        self._wake()

    def _wake(self) -> None:
        for loop, event in list(self._wakers):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that event loop is closed: its reader is gone
                pass

    # --- the consumer's side ---

    def _take(self) -> tuple[list[str], bool]:
        pieces = list(self._pieces)
        self._pieces.clear()
        return pieces, self.done

    def __iter__(self) -> Iterator[str]:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pieces or self.done)
                pieces, done = self._take()
            for piece in pieces:
                self.text += piece
                yield piece
            if done:
                break
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[str]:
        waker = (asyncio.get_running_loop(), asyncio.Event())
        self._wakers.append(waker)
        try:
            while True:
                with self._changed:
                    pieces, done = self._take()
                for piece in pieces:
                    self.text += piece
                    yield piece
                if done:
                    break
                if not pieces:
                    await waker[1].wait()
                    waker[1].clear()
        finally:
            self._wakers.remove(waker)
        if self.error is not None:
            raise self.error

    def wait(self) -> str:
        """Consume the rest of the stream and return the whole reply."""
        for _ in self:
            pass
        return self.text
