"""The generation engine of Module 7: one loaded chat model that streams replies and measures each one.

Used by ``llm-course generate``, ``chat``, ``serve`` (the Gradio page and the OpenAI-compatible API) and the RAG
answers of Module 8. Loading goes through Module 6's code (:mod:`llm_course.sft.lora`), so an adapter folder, a
merged folder and every weight format load the way training saved them.
"""

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from llm_course.errors import ConfigError
from llm_course.inference.sampling import InvalidRequest, SamplingParams, StopScanner
from llm_course.memory import current_mb, peak_mb, reset_peak

Weights = Literal["fp32", "bf16", "int8", "nf4"]
# weight format → (Module 6's quantization, dtype of the unquantized layers)
WEIGHT_FORMATS: dict[str, tuple[str, str]] = {
    "fp32": ("none", "float32"),
    "bf16": ("none", "bfloat16"),
    "int8": ("int8", "float32"),
    "nf4": ("nf4", "float32"),
}


@dataclass
class ReplyStats:
    """What one reply cost. Times in seconds; memory in MiB (process RSS; CUDA allocated and peak on a GPU)."""

    prompt_tokens: int
    completion_tokens: int = 0
    time_to_first_token_s: float | None = None
    decode_tokens_per_s: float | None = None
    latency_s: float = 0.0
    rss_mb: float = 0.0
    cuda_allocated_mb: float | None = None
    cuda_peak_mb: float | None = None
    finish_reason: str = "stop"  # stop (end of turn or a stop string), length (max_new_tokens), cancelled

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


class _Cancelled:
    """A stopping criterion that ends generation once ``event`` is set (a Ctrl-C, a client gone)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Generation:
    """One reply being generated in a background thread; iterate it for text pieces, then read ``stats``.

    ``cancel()`` stops it at the next token. ``on_done`` (if given) is called from the generating thread when the
    model is free again, also after a cancel or an error.
    """

    def __init__(self, engine: "GenerationEngine", prompt_ids: list[int], params: SamplingParams,
                 on_done: Callable[["Generation"], None] | None = None) -> None:  # fmt: skip
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        self.engine, self.params, self.on_done = engine, params, on_done
        self.stats = ReplyStats(prompt_tokens=len(prompt_ids))
        self.text, self.error = "", None
        self._cancel, self._times = threading.Event(), []
        self._scanner = StopScanner(params.stop)
        streamer = TextIteratorStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True)
        put = streamer.put

        def timed_put(value: torch.Tensor) -> None:  # every new token passes here: the clock for the stats
            if not streamer.next_tokens_are_prompt:
                self._times.append(time.perf_counter())
            put(value)

        streamer.put = timed_put
        self._streamer = streamer
        self._kwargs = {
            "input_ids": torch.tensor([prompt_ids], device=engine.device),
            "attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long, device=engine.device),
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_Cancelled(self._cancel)]),
            "pad_token_id": engine.tokenizer.pad_token_id,
            **params.generate_kwargs(),
        }
        if params.stop:
            self._kwargs |= {"stop_strings": params.stop, "tokenizer": engine.tokenizer}
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        device = self.engine.device
        try:
            with self.engine.lock, torch.inference_mode():
                reset_peak(device)
                if self.params.seed is not None:
                    torch.manual_seed(self.params.seed)
                self.engine.model.generate(**self._kwargs)
        except BaseException as err:  # shown to the reader of the stream, not lost in a thread
            self.error = err
            self._streamer.end()
        finally:
            self._finish(device)
            if self.on_done is not None:
                self.on_done(self)

    def _finish(self, device: torch.device) -> None:
        s, times = self.stats, self._times
        s.latency_s = time.perf_counter() - self._start
        s.completion_tokens = len(times)
        if times:
            s.time_to_first_token_s = times[0] - self._start
        if len(times) > 1:
            s.decode_tokens_per_s = (len(times) - 1) / (times[-1] - times[0])
        s.rss_mb = current_mb("cpu")
        if device.type == "cuda":
            s.cuda_allocated_mb, s.cuda_peak_mb = current_mb(device), peak_mb(device)
        if self._cancel.is_set():
            s.finish_reason = "cancelled"
        elif len(times) >= self.params.max_new_tokens and not self._scanner.stopped:
            s.finish_reason = "length"

    def __iter__(self) -> Iterator[str]:
        for piece in self._streamer:
            shown = self._scanner.feed(piece)
            self.text += shown
            if shown:
                yield shown
        self._thread.join()
        if self.error is not None:
            raise self.error
        rest = self._scanner.flush()
        self.text += rest
        if rest:
            yield rest

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self) -> str:
        """Consume the rest of the stream and return the whole reply."""
        for _ in self:
            pass
        return self.text


class GenerationEngine:
    """A causal LM with its tokenizer and chat template, ready to stream replies.

    Generation runs one reply at a time (``lock``): on a CPU the cores are better spent on one reply than shared.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str = "model", weights: str = "fp32") -> None:
        self.model, self.tokenizer, self.name, self.weights = model.eval(), tokenizer, name, weights
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()
        config = model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.context_length = int(limit or tokenizer.model_max_length)

    @classmethod
    def load(
        cls,
        model: str = "smollm2-135m-instruct",
        adapter: str | None = None,
        weights: Weights = "fp32",
        device: str = "auto",
        trust_remote_code: bool = False,
    ) -> "GenerationEngine":
        """Load a chat model: an embedded name, a hub id, a HF folder (e.g. from ``llm-course merge``), or a LoRA
        adapter folder from Module 6 (``model`` itself, or ``adapter`` on top of ``model``).

        Args:
            model: embedded name, hub id, model folder, or adapter folder (its base is read from it).
            adapter: a LoRA adapter folder to apply to ``model``.
            weights: fp32, bf16, int8 or nf4 (bitsandbytes; int8/nf4 compute in bf16).
            device: ``auto`` (CUDA when there is one), ``cpu``, ``cuda``, ``cuda:1``...
            trust_remote_code: allow model code from the hub (off unless you trust the repo).
        """
        from llm_course.inference.loading import load_model

        return load_model(cls, model, adapter, weights, device, trust_remote_code)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation rendered with the chat template (or, without one, the plain Alpaca-style
        prompt of :func:`~llm_course.sft.prompts.plain_prompt`), ending where the reply starts.

        Raises:
            InvalidRequest: the plain prompt cannot render ``messages`` (``param="messages"``: a 400 in the API).
        """
        from llm_course.sft.prompts import encode, prompt_text

        try:
            text = prompt_text(self.tokenizer, messages)
        except ConfigError as err:
            raise InvalidRequest(str(err), param="messages") from err
        return encode(self.tokenizer, text)

    def stream(self, messages: list[dict[str, str]], params: SamplingParams,
               on_done: Callable[[Generation], None] | None = None) -> Generation:  # fmt: skip
        """Start a reply to ``messages`` (checked first: :class:`~llm_course.inference.sampling.InvalidRequest`)."""
        return Generation(self, self.check(messages, params), params, on_done)

    def check(self, messages: list[dict[str, str]], params: SamplingParams) -> list[int]:
        """The prompt's token ids, after checking that ``params`` are allowed and the reply fits the context."""
        ids = self.prompt_ids(messages)
        params.check(len(ids), self.context_length)
        return ids

    def generate(self, messages: list[dict[str, str]], params: SamplingParams) -> tuple[str, ReplyStats]:
        """The whole reply and its stats."""
        generation = self.stream(messages, params)
        return generation.wait(), generation.stats

    def warm_up(self) -> None:
        """One short greedy reply, so the first real request does not pay for the first call's set-up."""
        self.generate([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0, max_new_tokens=2))

    @property
    def weights_mb(self) -> float:
        """Size of the loaded weights (parameters and buffers), in MiB."""
        return self.model.get_memory_footprint() / 2**20

    def describe(self) -> str:
        size = f"{self.weights_mb:,.0f} MiB weights"
        return f"{Path(self.name).name} ({self.weights}, {size}, {self.device}, context {self.context_length})"
