"""Prompt caching for tool calls: the instructions and few-shot examples open every prompt of a policy, so their keys
and values are computed once and copied into each call, which then prefills only its own turns.

On this course's 2-core CPU SmolLM2 prefilled the desk's 550-token prefix in about 13 s, every call; with the cache a
call prefills the customer's message alone (tens of tokens). vLLM's automatic prefix caching and llama.cpp's
``cache_prompt`` do the same for a server's requests.
"""

import copy
from typing import Any

import torch


class PrefixCache:
    """The key/value cache of ``messages`` rendered with the chat template (no reply prompt after them).

    Args:
        engine: the :class:`~llm_course.inference.engine.GenerationEngine` whose model computes it.
        messages: the conversation every prompt starts with.
    """

    def __init__(self, engine: Any, messages: list[dict[str, str]]) -> None:
        from llm_course.sft.prompts import encode, has_chat_template

        self.engine, self.cache = engine, None
        tokenizer = engine.tokenizer
        # without a chat template (the plain Alpaca prompt) the prefix is not a clean cut: nothing is cached
        self.ids = encode(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False)) if (
            has_chat_template(tokenizer) and messages) else []  # fmt: skip

    def covers(self, ids: list[int]) -> bool:
        """Whether ``ids`` start with the prefix (and go on past it)."""
        return bool(self.ids) and len(ids) > len(self.ids) and ids[: len(self.ids)] == self.ids

    def copy(self) -> Any:
        """A fresh copy of the prefix's cache (generation appends to the copy); computed on first use. Call it
        holding the engine's lock, under ``torch.inference_mode()``."""
        if self.cache is None:
            from transformers import DynamicCache

            model = self.engine.model
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([self.ids], device=self.engine.device), cache=cache, use_cache=True)
            self.cache = cache
        return copy.deepcopy(self.cache)
