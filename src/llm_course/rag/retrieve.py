"""Retrieval over a :class:`~llm_course.rag.index.RagIndex`: dense, BM25, or both fused by reciprocal rank."""

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from llm_course.errors import ConfigError
from llm_course.rag.chunks import Chunk
from llm_course.rag.index import RagIndex

Mode = Literal["dense", "bm25", "hybrid"]
MODES = ("dense", "bm25", "hybrid")
RRF_K = 60  # the constant of Cormack et al.'s reciprocal rank fusion: 1 / (60 + rank)


@dataclass
class Hit:
    chunk: Chunk
    score: float  # the mode's own score: cosine (dense), BM25, fused 1/(k+rank) sums (hybrid), or the reranker's
    index: int


@dataclass
class Retrieval:
    hits: list[Hit]
    best_dense: float  # cosine of the closest chunk
    coverage: float  # IDF-weighted share of the question's words found in the hits (RagIndex.coverage)
    ms: float

    def support(self, signal: str) -> float:
        """The abstention signal: ``dense`` (cosine), ``coverage``, or ``mean`` (their average)."""
        values = {"dense": self.best_dense, "coverage": self.coverage, "mean": (self.best_dense + self.coverage) / 2}
        if signal not in values:
            raise ConfigError(f"--abstain_on={signal!r} is not one of: {', '.join(values)}")
        return values[signal]


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse rankings (lists of ids, best first) by summing ``1 / (k + rank)``; best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


class Retriever:
    """Embeds queries with the index's embedder and searches in one of :data:`MODES`; an optional cross-encoder
    (a local sentence-transformers ``CrossEncoder`` folder) re-scores the candidates."""

    def __init__(self, index: RagIndex, embedder: Any, backend: str = "exact", reranker: Any | None = None,
                 candidates: int = 20) -> None:  # fmt: skip
        self.index, self.embedder, self.backend, self.reranker = index, embedder, backend, reranker
        self.candidates = candidates

    def embed(self, query: str) -> np.ndarray:
        return np.asarray(self.embedder.encode([query], normalize_embeddings=True, convert_to_numpy=True)[0],
                          dtype=np.float32)  # fmt: skip

    def search(self, query: str, mode: Mode = "hybrid", top_k: int = 3) -> Retrieval:
        if mode not in MODES:
            raise ConfigError(f"--mode={mode!r} is not one of: {', '.join(MODES)}")
        if top_k < 1:
            raise ConfigError(f"--top_k={top_k} must be >= 1")
        start = time.perf_counter()
        pool = max(self.candidates, top_k)
        dense = self.index.dense_search(self.embed(query), pool, self.backend)
        best_dense = dense[0][1] if dense else 0.0
        if mode == "dense":
            ranked = dense
        elif mode == "bm25":
            ranked = self.index.bm25_search(query, pool)
        else:
            lexical = self.index.bm25_search(query, pool)
            ranked = reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in lexical]])
        if self.reranker is not None and ranked:
            ids = [i for i, _ in ranked[:pool]]
            scores = self.reranker.predict([(query, self.index.chunks[i].for_embedding()) for i in ids])
            ranked = sorted(zip(ids, map(float, scores), strict=True), key=lambda item: -item[1])
        hits = [Hit(self.index.chunks[i], s, i) for i, s in ranked[:top_k]]
        coverage = self.index.coverage(query, [h.chunk for h in hits])
        return Retrieval(hits, best_dense, coverage, 1e3 * (time.perf_counter() - start))
