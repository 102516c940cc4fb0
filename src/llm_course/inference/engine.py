"""The generation engine of Module 7: one loaded chat model that streams replies and measures each one.

Used by ``llm-course generate``, ``chat``, ``serve`` (the Gradio page and the OpenAI-compatible API) and the RAG
answers of Module 8. Loading goes through Module 6's code (:mod:`llm_course.sft.lora`), so an adapter folder, a
merged folder and every weight format load the way training saved them.
"""

import threading
from pathlib import Path
from typing import Any, Literal

import torch

from llm_course.errors import ConfigError
from llm_course.inference.loading import WEIGHT_FORMATS  # noqa: F401  (re-exported: serve checks against it)
from llm_course.inference.request import Generation, ReplyStats
from llm_course.inference.sampling import InvalidRequest, SamplingParams

Weights = Literal["fp32", "bf16", "fp16", "int8", "nf4"]  # the keys of WEIGHT_FORMATS


class GenerationEngine:
    """A causal LM with its tokenizer and chat template, ready to stream replies.

    ``stream`` decodes one reply on its own (the terminal commands); the server's
    :class:`~llm_course.inference.scheduler.Scheduler` instead decodes the replies that overlap in time in one batch
    (:mod:`~llm_course.inference.batching`), which on a CPU too gives far more tokens/s in all: each decode step reads
    the weights once, for every row of the batch (notes/07). ``lock`` keeps the two from computing on the model at once.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str = "model", weights: str = "fp32") -> None:
        self.model, self.tokenizer, self.name, self.weights = model.eval(), tokenizer, name, weights
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()
        config = model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.context_length = int(limit or tokenizer.model_max_length)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)  # what ``generate`` stops on
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = {i for i in (eos if isinstance(eos, list) else [eos]) if i is not None}

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

    def stream(self, messages: list[dict[str, str]], params: SamplingParams) -> Generation:
        """Start a reply to ``messages`` (checked first: :class:`~llm_course.inference.sampling.InvalidRequest`),
        decoded on its own in a background thread; iterate the result for its text pieces."""
        from llm_course.inference.batching import decode_alone

        generation = Generation(self, self.check(messages, params), params)
        threading.Thread(target=decode_alone, args=(generation,), name="generation", daemon=True).start()
        return generation

    def check(self, messages: list[dict[str, str]], params: SamplingParams,
              max_prompt_tokens: int | None = None) -> list[int]:  # fmt: skip
        """The prompt's token ids, after checking that ``params`` are allowed and the reply fits the context (and,
        if given, that the prompt has at most ``max_prompt_tokens``). Tokenizes: the server calls it off its event
        loop, once per request."""
        ids = self.prompt_ids(messages)
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            raise InvalidRequest(
                f"the prompt is {len(ids)} tokens, over this server's limit of {max_prompt_tokens} "
                "(--max_prompt_tokens): shorten the messages",
                param="messages",
                code="context_length_exceeded",
            )
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
