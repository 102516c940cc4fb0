"""``llm-course rag index | search | ask``: question answering over a folder of notes (Module 8)."""

import json as jsonlib
import sys
from typing import Any

from llm_course.inference.engine import Weights
from llm_course.rag.answer import DEFAULT_ANSWER, DEFAULT_MIN_SCORE, AnswerMode, NotesQA
from llm_course.rag.index import RagIndex, load_embedder, load_for_refresh
from llm_course.rag.retrieve import Mode, Retriever

INDEX_DIR = "outputs/rag_index"


def refresh_index(source: str, index_dir: str, embedder: Any, max_tokens: int = 200, overlap_tokens: int = 32,
                  batch_size: int = 32, embedder_name: str = "minilm",
                  previous: RagIndex | None = None) -> tuple[RagIndex, dict[str, int]]:  # fmt: skip
    """Bring the index in ``index_dir`` (``previous``, if already loaded) up to date with ``source``: changed files
    re-embedded, deleted ones dropped, unchanged ones reused; saved when anything changed."""
    if previous is None:
        previous = load_for_refresh(index_dir)
    index, stats = RagIndex.build(source, embedder, embedder_name, max_tokens, overlap_tokens, batch_size, previous)
    if previous is None or stats["files_embedded"] or stats["files_removed"]:
        index.save(index_dir)
    return index, stats


def index(source: str = "notes", index_dir: str = INDEX_DIR, embedder: str = "minilm", max_tokens: int = 200,
          overlap_tokens: int = 32, batch_size: int = 32, device: str = "cpu") -> None:  # fmt: skip
    """Index Markdown/text files for retrieval: chunks by heading (bounded tokens, small overlap), MiniLM
    embeddings, BM25. Re-running re-embeds only the files that changed.

    Args:
        source: a folder (searched recursively for .md, .markdown, .txt) or one file.
        index_dir: where the index goes (manifest.json, embeddings.npy, bm25/).
        embedder: a sentence-transformers model: minilm (embedded), a hub id or a folder.
        max_tokens: most embedder tokens per chunk, heading path included (MiniLM reads 256).
        overlap_tokens: tokens of trailing lines repeated at the start of the next chunk of a long section.
        batch_size: chunks per embedding batch.
        device: cpu or cuda.
    """
    model = load_embedder(embedder, device)
    built, stats = refresh_index(source, index_dir, model, max_tokens, overlap_tokens, batch_size, embedder)
    files = len(built.file_hashes)
    print(f"{index_dir}: {len(built.chunks)} chunks from {files} files ({stats['files_embedded']} embedded, "
          f"{stats['files_reused']} unchanged, {stats['files_removed']} removed)")  # fmt: skip


def open_index(source: str | None, index_dir: str, device: str = "cpu") -> tuple[RagIndex, Any]:
    """The index in ``index_dir`` and the embedder it was built with (queries must be embedded by the same model),
    brought up to date with ``source`` when given, under the index's own chunk settings (a new index: the
    defaults). Without ``source`` the index must exist."""
    previous = RagIndex.load(index_dir) if source is None else load_for_refresh(index_dir)  # no source: its errors
    settings = {k: previous.settings[k] for k in ("max_tokens", "overlap_tokens")} if previous is not None else {}
    name = previous.settings["embedder"] if previous is not None else "minilm"
    embedder = load_embedder(name, device)
    if source is None:
        return previous, embedder
    return refresh_index(source, index_dir, embedder, embedder_name=name, previous=previous, **settings)[0], embedder


def _qa(source: str | None, index_dir: str, mode: Mode, top_k: int, min_score: float, backend: str,
        reranker: str | None, model: str | None, adapter: str | None, weights: str, device: str,
        answer: AnswerMode = DEFAULT_ANSWER, check: bool = True) -> NotesQA:  # fmt: skip
    built, embedder = open_index(source, index_dir, "cpu" if device == "auto" else device)
    cross = None
    if reranker:
        from sentence_transformers import CrossEncoder

        from llm_course.assets import resolve_model

        cross = CrossEncoder(resolve_model(reranker, "--reranker"))
    engine = None
    if model is not None and answer != "extractive":  # extractive answers need no chat model
        from llm_course.inference.engine import GenerationEngine

        engine = GenerationEngine.load(model, adapter, weights, device)
    return NotesQA(Retriever(built, embedder, backend, cross), engine, mode, top_k, min_score, answer=answer,
                   check=check)  # fmt: skip


def search(query: str, source: str | None = "notes", index_dir: str = INDEX_DIR, mode: Mode = "hybrid",
           top_k: int = 5, backend: str = "exact", reranker: str | None = None) -> None:  # fmt: skip
    """Show the chunks a question retrieves, with their scores (no generation).

    Args:
        query: the question.
        source: the notes folder, re-indexed where it changed (none: use the index as it is).
        index_dir: the index folder.
        mode: dense (MiniLM cosine), bm25, or hybrid (reciprocal rank fusion of both).
        top_k: chunks to show.
        backend: exact (sentence-transformers semantic_search) or faiss.
        reranker: a local cross-encoder folder that re-scores the candidates (optional).
    """
    qa = _qa(source, index_dir, mode, top_k, DEFAULT_MIN_SCORE, backend, reranker, None, None, "fp32", "cpu")
    found = qa.retriever.search(query, mode, top_k)
    print(f"best dense cosine {found.best_dense:.3f}; {found.ms:.1f} ms")
    for n, hit in enumerate(found.hits, start=1):
        first = hit.chunk.text.strip().splitlines()[0][:100]
        print(f"[{n}] {hit.score:.4f}  {hit.chunk.citation()}\n     {first}")


def ask(
    question: str,
    source: str | None = "notes",
    index_dir: str = INDEX_DIR,
    answer: AnswerMode = DEFAULT_ANSWER,
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    weights: Weights = "fp32",
    mode: Mode = "hybrid",
    top_k: int = 3,
    min_score: float = DEFAULT_MIN_SCORE,
    check: bool = True,
    backend: str = "exact",
    reranker: str | None = None,
    json: bool = False,
    device: str = "auto",
) -> None:
    """Answer a question from the notes: the sentences of the notes that answer it, with their sources, and
    (``--answer generate|both``) the chat model's answer, each sentence checked against the passages; or say the
    notes do not cover it.

    Args:
        question: the question.
        source: the notes folder, re-indexed where it changed (none: use the index as it is).
        index_dir: the index folder (built on first use).
        answer: extractive (the evidence sentences are the answer; no chat model is loaded), generate (the
            model's sentences that the passages support; the evidence when none is) or both.
        model: the chat model (Module 7's engine): smollm2-135m-instruct, a folder, a hub id.
        adapter: a LoRA adapter folder to answer with: the grounded-answer adapter of configs/rag_lora.yaml
            (notes/08), e.g. outputs/rag_lora/tensorboard_logs/version_0/adapter.
        weights: fp32, bf16, int8 or nf4.
        mode: dense, bm25 or hybrid retrieval.
        top_k: passages (sections) given to the model.
        min_score: abstain when the passages cover less than this share of the question's words (IDF-weighted
            coverage; chosen by bench rag, notes/08).
        check: drop generated sentences that the passages do not support (false: show every sentence).
        backend: exact or faiss dense search.
        reranker: a local cross-encoder folder that re-scores the candidates and the evidence sentences (optional).
        json: print the answer, evidence, generated sentences with their checks, citations, scores, timings as JSON.
        device: auto, cpu, cuda.
    """
    qa = _qa(source, index_dir, mode, top_k, min_score, backend, reranker, model, adapter, weights, device, answer,
             check)  # fmt: skip
    result = qa.ask(question)
    if json:
        print(jsonlib.dumps(result.as_dict(), indent=2))
        return
    print(result.render())
    timing = f"retrieval {result.retrieval.ms:.0f} ms"
    if result.stats is not None:
        timing += f", generation {result.stats.latency_s:.1f} s ({result.stats.line()})"
    print(timing, file=sys.stderr)
