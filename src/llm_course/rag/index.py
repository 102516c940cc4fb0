"""The RAG index: chunks + normalized MiniLM embeddings (``embeddings.npy``) + a BM25 index (bm25s), on disk.

``manifest.json`` holds the settings, each file's content hash and the chunks in the order of the embedding rows.
Updating re-embeds only files whose content changed and drops files that are gone.
"""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_course.errors import ConfigError, MissingFileError
from llm_course.rag.chunks import Chunk, content_hash, find_files, split_file

MANIFEST, EMBEDDINGS, BM25_DIR = "manifest.json", "embeddings.npy", "bm25"
STOPWORDS = frozenset("""a an and are as at be but by do does for from has have how i if in into is it its my no not of
on or so such than that the their then there these they this to was were what when where which who why will with would
you your can could should may might me we our us one two use used using""".split())


def load_embedder(model: str = "minilm", device: str = "cpu") -> Any:
    """A sentence-transformers model through the asset resolver (``minilm``: the embedded all-MiniLM-L6-v2)."""
    from sentence_transformers import SentenceTransformer

    from llm_course.assets import resolve_model

    return SentenceTransformer(resolve_model(model, "--embedder"), device=device)


def embedding_dimension(embedder: Any) -> int:
    """sentence-transformers 6 renamed ``get_sentence_embedding_dimension`` to ``get_embedding_dimension``."""
    method = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
    return int(method())


@dataclass
class RagIndex:
    """Chunks, their embeddings (rows, L2-normalized) and the settings they were made with."""

    chunks: list[Chunk]
    embeddings: np.ndarray
    settings: dict[str, Any]
    file_hashes: dict[str, str] = field(default_factory=dict)
    _bm25: Any = None
    _faiss: Any = None
    _doc_freq: dict[str, int] | None = None

    # ---- building ----------------------------------------------------------------------------------------
    @classmethod
    def build(cls, source: str, embedder: Any, embedder_name: str = "minilm", max_tokens: int = 200,
              overlap_tokens: int = 32, batch_size: int = 32,
              previous: "RagIndex | None" = None) -> tuple["RagIndex", dict[str, int]]:  # fmt: skip
        """Index the files under ``source``; with ``previous`` (same settings), reuse the chunks and embeddings of
        files whose content hash did not change. Returns the index and counts (files embedded/reused/removed)."""
        settings = {"embedder": embedder_name, "max_tokens": max_tokens, "overlap_tokens": overlap_tokens,
                    "dimension": embedding_dimension(embedder)}  # fmt: skip
        reuse = previous is not None and {k: previous.settings.get(k) for k in settings} == settings
        count = lambda text: len(embedder.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        chunks: list[Chunk] = []
        rows: list[np.ndarray] = []
        hashes, stats = {}, {"files_embedded": 0, "files_reused": 0, "files_removed": 0, "chunks_embedded": 0}
        for path in find_files(source):
            text = path.read_text(encoding="utf-8", errors="replace")
            name, digest = path.as_posix(), content_hash(text)
            hashes[name] = digest
            if reuse and previous.file_hashes.get(name) == digest:
                kept = [i for i, c in enumerate(previous.chunks) if c.file == name]
                chunks += [previous.chunks[i] for i in kept]
                rows.append(previous.embeddings[kept])
                stats["files_reused"] += 1
                continue
            new = split_file(name, text, count, max_tokens, overlap_tokens)
            if new:
                vectors = embedder.encode([c.for_embedding() for c in new], batch_size=batch_size,
                                          normalize_embeddings=True, convert_to_numpy=True)  # fmt: skip
                rows.append(np.asarray(vectors, dtype=np.float32))
            chunks += new
            stats["files_embedded"] += 1
            stats["chunks_embedded"] += len(new)
        if reuse:
            stats["files_removed"] = len(set(previous.file_hashes) - set(hashes))
        if not chunks:
            raise ConfigError(f"--source {source}: the files hold no text to index")
        embeddings = np.concatenate(rows) if rows else np.zeros((0, settings["dimension"]), np.float32)
        return cls(chunks, embeddings, settings, hashes), stats

    # ---- storage ---------------------------------------------------------------------------------------
    def save(self, index_dir: str | Path) -> None:
        out = Path(index_dir)
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"settings": self.settings, "files": self.file_hashes, "chunks": [c.as_dict() for c in self.chunks]}
        np.save(out / EMBEDDINGS, self.embeddings)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        self.bm25().save(str(out / BM25_DIR))

    @classmethod
    def load(cls, index_dir: str | Path) -> "RagIndex":
        folder = Path(index_dir)
        if not (folder / MANIFEST).is_file() or not (folder / EMBEDDINGS).is_file():
            raise MissingFileError(
                f"--index_dir {index_dir}: no index there (manifest.json + embeddings.npy); build one with "
                f"llm-course rag index --source notes/ --index_dir {index_dir}"
            )
        manifest = json.loads((folder / MANIFEST).read_text())
        index = cls([Chunk(**c) for c in manifest["chunks"]], np.load(folder / EMBEDDINGS), manifest["settings"],
                    manifest["files"])  # fmt: skip
        if (folder / BM25_DIR).is_dir():
            import bm25s

            index._bm25 = bm25s.BM25.load(str(folder / BM25_DIR))
        return index

    # ---- search ----------------------------------------------------------------------------------------
    def bm25(self) -> Any:
        """The BM25 index over the chunks' searchable text (English stop words removed)."""
        if self._bm25 is None:
            import bm25s

            self._bm25 = bm25s.BM25()
            self._bm25.index(bm25s.tokenize([c.for_embedding() for c in self.chunks], stopwords="en",
                                            show_progress=False), show_progress=False)  # fmt: skip
        return self._bm25

    def dense_search(self, query_vector: np.ndarray, top_k: int, backend: str = "exact") -> list[tuple[int, float]]:
        """``(chunk index, cosine)`` best first: sentence-transformers' exact ``semantic_search``, or faiss."""
        top_k = min(top_k, len(self.chunks))
        if backend == "faiss":
            scores, ids = self.faiss().search(query_vector.reshape(1, -1).astype(np.float32), top_k)
            return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True)]
        if backend != "exact":
            raise ConfigError(f"--backend={backend!r} is not one of: exact, faiss")
        import torch
        from sentence_transformers.util import semantic_search

        hits = semantic_search(torch.from_numpy(query_vector).reshape(1, -1), torch.from_numpy(self.embeddings),
                               top_k=top_k)[0]  # fmt: skip
        return [(h["corpus_id"], float(h["score"])) for h in hits]

    def faiss(self) -> Any:
        """An exact inner-product faiss index (cosine on normalized rows), for corpora far larger than the notes."""
        if self._faiss is None:
            try:
                import faiss
            except ImportError as err:
                from llm_course.errors import MissingDependencyError

                raise MissingDependencyError('--backend faiss needs faiss: pip install -e ".[faiss]"') from err
            self._faiss = faiss.IndexFlatIP(self.embeddings.shape[1])
            self._faiss.add(self.embeddings)
        return self._faiss

    def bm25_search(self, query: str, top_k: int) -> list[tuple[int, float]]:
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:  # nothing but stop words
            return []
        ids, scores = self.bm25().retrieve(tokens, k=min(top_k, len(self.chunks)), show_progress=False)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]

    def coverage(self, query: str, chunks: list[Chunk]) -> float:
        """How much of the question the passages speak about: the IDF-weighted share of the question's words (stop
        words and words of 1-2 letters left out) that occur in ``chunks``. A word the notes never use (RLHF,
        Kubernetes) weighs most, so a question about something the notes lack scores low even when its topic is
        close (a cosine cannot tell "LoRA" from "RLHF" apart as well)."""
        if self._doc_freq is None:
            self._doc_freq = {}
            for chunk in self.chunks:
                for word in set(words(chunk.for_embedding())):
                    self._doc_freq[word] = self._doc_freq.get(word, 0) + 1
        asked = [w for w in set(words(query)) if w not in STOPWORDS and len(w) > 2]
        if not asked:
            return 0.0
        n = len(self.chunks)
        idf = {w: math.log((n + 1) / (self._doc_freq.get(w, 0) + 0.5)) for w in asked}
        present = set().union(*(set(words(c.for_embedding())) for c in chunks)) if chunks else set()
        return sum(v for w, v in idf.items() if w in present) / sum(idf.values())


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())
