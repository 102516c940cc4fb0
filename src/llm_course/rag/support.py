"""The support check: is a generated sentence stated in the passages the model was given?

Each sentence (its ``[n]`` markers left out) gets two scores:

- ``similarity``: its MiniLM cosine to the closest sentence (or table row) of all given passages;
- ``overlap``: the share of its content words (stop words and words of 1-2 letters left out, compared by their
  Snowball stem) found in the passages it cites, or in all given passages when it cites none.

It passes when both reach their thresholds. The thresholds were chosen on the validation half of a hand-labelled
set of (sentence, passage, supported) pairs kept beside this file (``support_pairs.jsonl``) and scored on its test
half: :func:`calibrate`, run by ``llm-course bench rag`` (notes/08 has the numbers). A sentence that fails is
dropped from the answer shown as the notes' word, and kept in the JSON, labelled, with its scores.
"""

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from llm_course.rag.evidence import sentences_of, split_sentences
from llm_course.rag.passages import Passage
from llm_course.rag.prompt import MARKER, cited

# Chosen by `llm-course bench rag` on the validation half of support_pairs.jsonl (see calibrate()).
MIN_SIMILARITY = 0.42
MIN_OVERLAP = 0.8


@dataclass(frozen=True)
class Checked:
    text: str  # the sentence as generated, markers included
    similarity: float
    overlap: float
    supported: bool
    cites: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "supported": self.supported, "similarity": round(self.similarity, 4),
                "overlap": round(self.overlap, 4), "cites": list(self.cites)}  # fmt: skip


def content_stems(text: str) -> set[str]:
    from llm_course.rag.index import STOPWORDS, stems

    return stems([w for w in re.findall(r"[a-z0-9_]+", text.lower()) if w not in STOPWORDS and len(w) > 2])


def overlap(sentence: str, passage_text: str) -> float:
    """The share of ``sentence``'s content stems that occur in ``passage_text`` (1.0 for a sentence with none)."""
    own = content_stems(MARKER.sub("", sentence))
    return len(own & content_stems(passage_text)) / len(own) if own else 1.0


def generated_sentences(text: str) -> list[str]:
    """The sentences of a generated answer (its paragraphs' wrapped lines joined, list markers kept)."""
    out: list[str] = []
    text = re.sub(r"([.!?])((?:\s?\[\d+\])+)", lambda m: m.group(2) + m.group(1), text)  # "b. [3] C" -> "b [3]. C"
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [(i, line.strip()) for i, line in enumerate(block.splitlines()) if line.strip()]
        for sentence, _, _ in split_sentences(lines) if lines else []:
            if out and not MARKER.sub("", sentence).strip():  # "... end. [3]": the marker belongs to the sentence
                out[-1] = f"{out[-1]} {sentence}"
            else:
                out.append(sentence)
    return out


def check_sentences(sentences: list[str], passages: list[Passage], embedder: Any,
                    min_similarity: float = MIN_SIMILARITY,
                    min_overlap: float = MIN_OVERLAP) -> list[Checked]:  # fmt: skip
    """Score each sentence against ``passages`` (see the module docstring)."""
    if not sentences:
        return []
    units = [s.text for s in sentences_of(passages)] or [p.text for p in passages]
    bare = [MARKER.sub("", s).strip() for s in sentences]
    vectors = embedder.encode([*bare, *units], normalize_embeddings=True, convert_to_numpy=True)
    similarity = (vectors[: len(bare)] @ vectors[len(bare) :].T).max(axis=1) if units else np.zeros(len(bare))
    by_n = {p.n: p.text for p in passages}
    out = []
    for sentence, sim in zip(sentences, similarity, strict=True):
        refs = tuple(n for n in cited(sentence) if n in by_n)
        pool = " ".join(by_n[n] for n in refs) if refs else " ".join(by_n.values())
        share = overlap(sentence, pool)
        out.append(Checked(sentence, float(sim), share, bool(sim >= min_similarity and share >= min_overlap), refs))
    return out


def load_pairs() -> list[dict[str, Any]]:
    """The hand-labelled (sentence, passage, supported) pairs packaged with the course."""
    text = resources.files("llm_course.rag").joinpath("support_pairs.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def score_pairs(pairs: list[dict[str, Any]], embedder: Any) -> list[tuple[float, float, bool]]:
    """``(similarity, overlap, label)`` of each pair, its passage given as passage [1]."""
    out = []
    for pair in pairs:
        lines = list(enumerate(pair["passage"].split("\n"), start=1))
        passage = Passage(1, "pair", [], pair.get("passage_source", "pair"), 1, len(lines), pair["passage"], 0.0, lines)
        checked = check_sentences([pair["sentence"]], [passage], embedder)[0]
        out.append((checked.similarity, checked.overlap, bool(pair["supported"])))
    return out


def precision_recall(scores: list[tuple[float, float, bool]], min_similarity: float,
                     min_overlap: float) -> dict[str, float]:  # fmt: skip
    """Of the sentences that pass, the share truly supported (precision); of the supported, the share that pass."""
    passed = [label for s, o, label in scores if s >= min_similarity and o >= min_overlap]
    supported = sum(label for _, _, label in scores)
    return {"precision": round(sum(passed) / len(passed), 4) if passed else 1.0,
            "recall": round(sum(passed) / supported, 4) if supported else 1.0,
            "passed": len(passed), "unsupported_passed": len(passed) - sum(passed), "pairs": len(scores)}  # fmt: skip


def calibrate(embedder: Any, min_precision: float = 0.9) -> dict[str, Any]:
    """Thresholds with the most recall among those with at least ``min_precision`` on the validation half (even
    positions) of the pairs (ties: the strictest); precision and recall on both halves."""
    scores = score_pairs(load_pairs(), embedder)
    val, test = scores[0::2], scores[1::2]
    grid = [(round(s, 2), round(o, 2)) for s in np.arange(0.3, 0.96, 0.02) for o in np.arange(0.0, 1.01, 0.05)]
    rated = [(precision_recall(val, s, o), s, o) for s, o in grid]
    allowed = [r for r in rated if r[0]["precision"] >= min_precision] or rated
    best, s, o = max(allowed, key=lambda r: (r[0]["recall"], r[0]["precision"], r[1], r[2]))
    return {"min_similarity": s, "min_overlap": o, "min_precision": min_precision, "validation": best,
            "test": precision_recall(test, s, o), "chosen_on": "validation half (even positions)"}  # fmt: skip
