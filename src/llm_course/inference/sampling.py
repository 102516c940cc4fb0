"""Sampling controls and their checks: the one place that says which values a reply may ask for.

The generate and chat commands, the Gradio page and the OpenAI-compatible API all build a
:class:`SamplingParams` and call :meth:`SamplingParams.check`, so a bad value gets the same message everywhere.
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from llm_course.errors import ConfigError

MAX_STOP = 4  # stop strings per request, OpenAI's limit


class InvalidRequest(ConfigError):
    """A generation request asks for something not allowed; ``param`` names the field (the API's error shape)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class SamplingParams:
    """How the next tokens are chosen.

    Attributes:
        temperature: 0 = greedy (always the most likely token); higher flattens the distribution.
        top_k: sample among the k most likely tokens only (0 = no limit).
        top_p: sample among the smallest set of tokens whose probabilities sum to at least p (1 = no limit).
        repetition_penalty: divide the logits of tokens already in the text by this (1 = off, >1 repeats less).
        max_new_tokens: most tokens to generate.
        seed: seed for the sampling random numbers (``None``: a different draw each time).
        stop: strings that end the reply where they appear (not included in it).
    """

    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def check(self, prompt_tokens: int, context_length: int) -> "SamplingParams":
        """Raise :class:`InvalidRequest` for a value out of range or a request that does not fit the context.

        Args:
            prompt_tokens: length of the rendered prompt.
            context_length: the model's limit on prompt + reply tokens.
        """
        ranges = [
            ("temperature", self.temperature >= 0, "must be >= 0 (0 = greedy)"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 = no limit)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1] (1 = no limit)"),
            ("repetition_penalty", self.repetition_penalty > 0, "must be > 0 (1 = off)"),
        ]
        for name, ok, allowed in ranges:
            if not ok:
                raise InvalidRequest(f"{name}={getattr(self, name)!r} {allowed}", param=name)
        if not 1 <= self.max_new_tokens <= context_length:
            raise InvalidRequest(
                f"max_new_tokens={self.max_new_tokens} must be in 1..{context_length} (the model's context length)",
                param="max_tokens",
            )
        if len(self.stop) > MAX_STOP:
            raise InvalidRequest(f"stop has {len(self.stop)} strings; at most {MAX_STOP} are allowed (as in OpenAI's "
                                 "API)", param="stop")  # fmt: skip
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidRequest(f"stop={self.stop!r}: each stop string must be a non-empty string", param="stop")
        if prompt_tokens >= context_length:
            raise InvalidRequest(
                f"the prompt is {prompt_tokens} tokens, over the model's context length of {context_length}: "
                "shorten the messages (or start a new conversation)",
                param="messages",
                code="context_length_exceeded",
            )
        if prompt_tokens + self.max_new_tokens > context_length:
            raise InvalidRequest(
                f"the prompt ({prompt_tokens} tokens) plus max_new_tokens={self.max_new_tokens} exceeds the model's "
                f"context length of {context_length}: ask for at most {context_length - prompt_tokens} new tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return self

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``: greedy at temperature 0, sampling otherwise."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature == 0:
            return kwargs | {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
        return kwargs | {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StopScanner:
    """Cut a stream of text pieces at the first stop string, holding back text that may start one.

    ``feed`` returns the text that is safe to show; ``stopped`` turns true once a stop string appeared.
    """

    def __init__(self, stop: list[str]) -> None:
        self.stop, self.text, self.shown, self.stopped = stop, "", 0, False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, self.text = True, self.text[: min(hits)]
            return self._release(len(self.text))
        hold = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._release(len(self.text) - hold)

    def flush(self) -> str:
        """The held-back rest, at the end of the stream."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        out, self.shown = self.text[self.shown : upto], max(self.shown, upto)
        return out
