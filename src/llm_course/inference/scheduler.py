"""The serving queue: one reply computes at a time, at most ``queue_size`` wait, the rest are told to come back.

Shared by the OpenAI-compatible API and the Gradio page, so both count against the same queue. A slot is held
from the moment a request gets the model until the generating thread lets go of it (after the last token, a
cancel, or an error), so a client that disconnects mid-stream frees its slot as soon as generation stops.
"""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

from fastapi.concurrency import iterate_in_threadpool

from llm_course.inference.engine import Generation, GenerationEngine
from llm_course.inference.sampling import SamplingParams


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""

    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(f"the server is busy: {waiting} requests are waiting; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Scheduler:
    """A bounded queue in front of the model(s): ``slots`` replies compute at once, ``queue_size`` wait."""

    def __init__(self, queue_size: int = 64, slots: int = 1, retry_after_s: int = 2) -> None:
        self.queue_size, self.slots, self.retry_after_s = queue_size, slots, retry_after_s
        self.waiting = self.running = 0
        self.finished: Counter[str] = Counter()  # replies by finish reason: stop, length, cancelled, error
        self._semaphore: asyncio.Semaphore | None = None  # made in the server's event loop

    @property
    def semaphore(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        return self._semaphore

    async def start(
        self, engine: GenerationEngine, messages: list[dict[str, str]], params: SamplingParams
    ) -> Generation:
        """Wait for a slot (or raise :class:`QueueFull`), then start the reply; bad input raises before queueing."""
        engine.check(messages, params)
        if self.waiting >= self.queue_size:
            raise QueueFull(self.waiting, self.retry_after_s)
        self.waiting += 1
        try:
            await self.semaphore.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        loop = asyncio.get_running_loop()
        try:
            return engine.stream(messages, params, on_done=lambda g: loop.call_soon_threadsafe(self._release, g))
        except BaseException:
            self._release(None)
            raise

    def _release(self, generation: Generation | None) -> None:
        self.running -= 1
        self.semaphore.release()
        if generation is not None:
            self.finished["error" if generation.error else generation.stats.finish_reason] += 1


async def pieces(generation: Generation) -> AsyncIterator[str]:
    """The reply's text pieces, read without blocking the event loop; leaving early (a client gone, an error)
    cancels the generation, which frees its slot."""
    try:
        async for piece in iterate_in_threadpool(iter(generation)):
            yield piece
    finally:
        generation.cancel()  # no effect once it has finished
