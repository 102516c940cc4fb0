"""The RAG index: chunks + normalized MiniLM embeddings (``embeddings.npy``) + a BM25 index (bm25s), on disk.

``manifest.json`` holds the settings, each file's content hash and the chunks in the order of the embedding rows.
Updating re-embeds only files whose content changed and drops files that are gone. A save replaces the whole folder
at once, under a file lock shared with readers; a load checks that the parts agree before anything reuses them.
"""

import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN
from filelock import FileLock

from llm_course.errors import ConfigError, IndexCorruptError, MissingFileError
from llm_course.rag.chunks import CHUNKER_VERSION, Chunk, content_hash, find_files, split_file

MANIFEST, EMBEDDINGS, BM25_DIR = "manifest.json", "embeddings.npy", "bm25"
# One list for BM25 and the coverage signal: bm25s's English words plus those questions are made of, which coverage
# must not count (a "how" the notes never use would weigh most; DEFAULT_MIN_SCORE was calibrated without them).
QUESTION_WORDS = """do does from has have how i its my so than were what when where which who why would you your can
could should may might me we our us one two use used using"""
STOPWORDS = frozenset(STOPWORDS_EN) | frozenset(QUESTION_WORDS.split())


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
                    "dimension": embedding_dimension(embedder), "chunker_version": CHUNKER_VERSION}  # fmt: skip
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
        """Write the index so that readers find the old index or the new one, never a mix of the two.

        ``rag index`` and ``serve --notes`` share one folder: under a file lock (``<index_dir>.lock``), the files go
        to a temporary folder beside it, which takes its place by rename; the old one is deleted only after. A writer
        killed halfway leaves the old index whole, and a leftover that the next save clears.

        Raises:
            ConfigError: ``index_dir`` is a file, or a folder that holds other files than an index's.
        """
        out = Path(index_dir).resolve()
        if out.exists() and (not out.is_dir() or {p.name for p in out.iterdir()} - {MANIFEST, EMBEDDINGS, BM25_DIR}):
            raise ConfigError(f"--index_dir {index_dir} is a file or a folder with other files than an index's; "
                              "a save replaces it whole: point it at a new or empty folder")  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        with _lock(out):
            for leftover in [*out.parent.glob(f".{out.name}-*.tmp"), *out.parent.glob(f".{out.name}-*.old")]:
                shutil.rmtree(leftover, ignore_errors=True)  # of a writer that died: none runs while we hold the lock
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent))
            try:
                np.save(tmp / EMBEDDINGS, self.embeddings)
                self.bm25().save(str(tmp / BM25_DIR))
                manifest = {"settings": self.settings, "files": self.file_hashes,
                            "chunks": [c.as_dict() for c in self.chunks]}  # fmt: skip
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
                for path in [*tmp.rglob("*"), tmp]:  # on disk before the rename publishes it
                    _fsync(path)
                if out.exists():
                    os.rename(out, tmp.with_suffix(".old"))
                os.rename(tmp, out)
                shutil.rmtree(tmp.with_suffix(".old"), ignore_errors=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, index_dir: str | Path) -> "RagIndex":
        """The index saved in ``index_dir``, once its parts are checked against each other.

        Raises:
            MissingFileError: there is no index there.
            IndexCorruptError: its parts disagree (chunks, embedding rows or width, BM25 documents) or cannot be
                read: searching it would cite the wrong sections.
        """
        folder = Path(index_dir)
        if not (folder / MANIFEST).is_file():
            raise MissingFileError(
                f"--index_dir {index_dir}: no index there (manifest.json + embeddings.npy); build one with "
                f"llm-course rag index --source notes/ --index_dir {index_dir}"
            )
        with _reading(folder.resolve()):
            try:
                manifest = json.loads((folder / MANIFEST).read_text())
                index = cls([Chunk(**c) for c in manifest["chunks"]], np.load(folder / EMBEDDINGS),
                            manifest["settings"], manifest["files"])  # fmt: skip
                if (folder / BM25_DIR).is_dir():  # else built from the chunks when first searched
                    index._bm25 = bm25s.BM25.load(str(folder / BM25_DIR))
                problems = index._disagreements()
            except (ValueError, KeyError, TypeError, EOFError, FileNotFoundError) as err:
                problems = [f"it cannot be read ({type(err).__name__}: {err})"]
        if problems:
            fix = f"rebuild it: llm-course rag index --source notes/ --index_dir {index_dir}"
            raise IndexCorruptError(f"--index_dir {index_dir}: the index is inconsistent: {'; '.join(problems)}", fix)
        return index

    def _disagreements(self) -> list[str]:
        """What does not add up: embedding rows and width, BM25 documents, files of the chunks."""
        n, rows, width, problems = len(self.chunks), self.embeddings, self.settings["dimension"], []
        if rows.ndim != 2 or len(rows) != n:
            problems.append(f"{EMBEDDINGS} holds {len(rows) if rows.ndim else 0} rows for the {n} chunks of {MANIFEST}")
        elif rows.shape[1] != width:
            problems.append(f"{EMBEDDINGS} rows are {rows.shape[1]} wide, the settings say {width}")
        if self._bm25 is not None and self._bm25.scores["num_docs"] != n:
            problems.append(f"{BM25_DIR}/ counts {self._bm25.scores['num_docs']} documents for the {n} chunks")
        if unlisted := {c.file for c in self.chunks} - set(self.file_hashes):
            problems.append(f"chunks of files the manifest does not list: {', '.join(sorted(unlisted))}")
        return problems

    # ---- search ----------------------------------------------------------------------------------------
    def bm25(self) -> Any:
        """The BM25 index over the chunks' searchable text (``STOPWORDS`` removed)."""
        if self._bm25 is None:
            self._bm25 = bm25s.BM25()
            self._bm25.index(bm25s.tokenize([c.for_embedding() for c in self.chunks], stopwords=STOPWORDS,
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
        tokens = bm25s.tokenize([query], stopwords=STOPWORDS, show_progress=False)
        if not tokens.vocab:  # nothing but stop words
            return []
        ids, scores = self.bm25().retrieve(tokens, k=min(top_k, len(self.chunks)), show_progress=False)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]

    def coverage(self, query: str, chunks: list[Chunk]) -> float:
        """How much of the question the passages speak about: the IDF-weighted share of the question's words (stop
        words and words of 1-2 letters left out, compared by their Snowball stem, so "protect" meets "protects")
        that occur in ``chunks``. A word the notes never use (RLHF, Kubernetes) weighs most, so a question about
        something the notes lack scores low even when its topic is close (a cosine cannot tell "LoRA" from "RLHF"
        apart as well). Stemming was chosen on the validation half of ``bench rag`` (fewer false abstentions)."""
        if self._doc_freq is None:
            self._doc_freq = {}
            for chunk in self.chunks:
                for stem in stems(words(chunk.for_embedding())):
                    self._doc_freq[stem] = self._doc_freq.get(stem, 0) + 1
        asked = stems([w for w in set(words(query)) if w not in STOPWORDS and len(w) > 2])
        if not asked:
            return 0.0
        n = len(self.chunks)
        idf = {w: math.log((n + 1) / (self._doc_freq.get(w, 0) + 0.5)) for w in asked}
        present = set().union(*(stems(words(c.for_embedding())) for c in chunks)) if chunks else set()
        return sum(v for w, v in idf.items() if w in present) / sum(idf.values())


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@cache
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


def stems(tokens: list[str]) -> set[str]:
    """The Snowball (Porter 2) stems of ``tokens``: PyStemmer, the stemmer bm25s uses."""
    return set(_stemmer().stemWords(tokens))


def load_for_refresh(index_dir: str | Path) -> RagIndex | None:
    """The index in ``index_dir`` to bring up to date (``previous`` of :meth:`RagIndex.build`); None if there is none.

    A corrupt index is not reused: it comes back empty, with its settings where its manifest still gives them, so
    the refresh re-embeds every file with the same embedder and chunk sizes. That, and an index whose chunking code
    has changed since (``chunker_version``: ``build`` re-chunks it), are said on stderr.
    """
    try:
        index = RagIndex.load(index_dir)
    except MissingFileError:
        return None
    except IndexCorruptError as err:
        print(f"{err.reason}: re-embedding every file", file=sys.stderr)
        try:
            settings = json.loads((Path(index_dir) / MANIFEST).read_text()).get("settings")
            needed = {"embedder", "max_tokens", "overlap_tokens", "dimension"}  # what a refresh reads from them
            if isinstance(settings, dict) and needed <= settings.keys():
                return RagIndex([], np.zeros((0, settings["dimension"]), np.float32), settings)
        except (ValueError, TypeError, AttributeError):  # not JSON, or not shaped as a manifest
            pass
        return None
    if (version := index.settings.get("chunker_version")) != CHUNKER_VERSION:
        print(f"--index_dir {index_dir}: the chunking code changed since it was built (chunker_version {version}, "
              f"now {CHUNKER_VERSION}): re-chunking every file", file=sys.stderr)  # fmt: skip
    return index


def _lock(folder: Path) -> FileLock:
    return FileLock(f"{folder}.lock")  # beside the folder, which a save replaces


@contextmanager
def _reading(folder: Path) -> Iterator[None]:
    """Hold the writers' lock while reading, so no save swaps the files between two reads; where no lock file can be
    made (a read-only folder), read without: nobody can be writing there either."""
    lock = _lock(folder)
    try:
        lock.acquire()
    except OSError:
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
