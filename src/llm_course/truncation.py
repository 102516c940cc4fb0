"""Tokenizing long texts for classification: keep the head, or the head and the tail (no Lightning here)."""

from typing import Any


def encode_texts(tokenizer: Any, texts: list[str], max_length: int, truncation: str = "head",
                 head_fraction: float = 0.25) -> list[list[int]]:  # fmt: skip
    """Token ids with special tokens, at most ``max_length``: ``head`` keeps the start of a long text,
    ``head_tail`` keeps ``head_fraction`` of the budget from the start and the rest from the end.

    Module 3's DataModule and the ONNX classifier (Module 7) tokenize with it, so both see the same ids.
    """
    # Where the special tokens sit ([CLS] ... [SEP] for BERT), learned from a one-word probe.
    body, full = tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full)) if full[i : i + len(body)] == body)
    end = len(full) - start - len(body)
    budget = max_length - start - end
    head = round(budget * head_fraction) if truncation == "head_tail" else budget
    out = []
    for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]:
        inner = ids[start : len(ids) - end]
        if len(inner) > budget:
            inner = inner[:head] + inner[len(inner) - (budget - head) :]
        out.append(ids[:start] + inner + ids[len(ids) - end :])
    return out
