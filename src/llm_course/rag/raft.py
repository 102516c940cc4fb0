"""Training data for the grounded-answer LoRA, after RAFT (Zhang et al. 2024, "RAFT: Adapting Language Model to
Domain Specific RAG"): numbered passages, the right one among distractors (or none), and a question; the answer
restates the right passage and cites it as ``[n]``, or says the passages do not cover the question.

Two sources, neither of them the evaluation questions of ``bench rag``:

- **the notes' own sections**: the question is made from a section's heading ("What do the notes say about the KV
  cache ...?"), the answer is the 1-2 sentences of that section that best answer it (chosen by
  :func:`~llm_course.rag.evidence.select_evidence`), then its marker. Notes listed in ``held_out`` give no
  example, so ``bench rag`` can report answers on notes the adapter never saw apart from the others.
- **alpaca_libre records with an ``input``**: the instruction is the question, the input the right passage, other
  records' inputs the distractors, the reference output (kept short) plus the marker the answer.

In ``none_share`` of the examples the right passage is left out and the answer is :data:`NOT_COVERED`.
The records are chat ``messages`` for Module 6's :class:`~llm_course.sft.InstructionDataModule`.
"""

import gzip
import json
import random
from pathlib import Path
from typing import Any

from llm_course.errors import ConfigError, MissingFileError
from llm_course.rag.chunks import Chunk, find_files, split_file
from llm_course.rag.evidence import select_evidence
from llm_course.rag.passages import Passage, chunk_lines
from llm_course.rag.prompt import NOT_COVERED, grounded_messages
from llm_course.reports import atomic_write_text

TEMPLATES = (
    "What do the notes say about {topic}?",
    "Explain {topic}.",
    "What should I know about {topic}?",
    "Can you summarize {topic} for me?",
)


def as_passage(chunk: Chunk, n: int = 1) -> Passage:
    return Passage(n, chunk.file, list(chunk.headings), chunk.anchor, chunk.start_line, chunk.end_line, chunk.text,
                   0.0, chunk_lines(chunk))  # fmt: skip


def topic(heading: str) -> str:
    """A heading as the object of a question: a leading capital lowered unless it starts an acronym or a name."""
    words = heading.strip().rstrip(".:?").split(" ")
    first = words[0]
    if len(first) > 1 and first[0].isupper() and first[1:].islower():
        words[0] = first.lower()
    return " ".join(words)


def example(question: str, passages: list[tuple[str, str]], answer: str, **meta: Any) -> dict[str, Any]:
    return {"messages": [*grounded_messages(question, passages), {"role": "assistant", "content": answer}], **meta}


def arrange(right: tuple[str, str] | None, distractors: list[tuple[str, str]], size: int,
            rng: random.Random) -> tuple[list[tuple[str, str]], int | None]:  # fmt: skip
    """``size`` passages: the right one (if any) at a random place among distractors; its 1-based number."""
    chosen = distractors[: size - (right is not None)]
    if right is None:
        return chosen, None
    place = rng.randrange(len(chosen) + 1)
    return chosen[:place] + [right] + chosen[place:], place + 1


def notes_examples(chunks: list[Chunk], embedder: Any, rng: random.Random, size: int = 3, none_share: float = 0.15,
                   per_chunk: int = 2, distractors: str = "random") -> list[dict[str, Any]]:  # fmt: skip
    """``per_chunk`` examples per chunk that has prose, each a heading question (in another wording).

    With ``distractors="retrieved"`` the passages are what ``rag ask`` would give for that question (RAFT's hard
    distractors): the sections the retriever ranks highest, windows of one section merged, the right section among
    them (added in a random place when the retriever missed it). With ``random``, other sections drawn at random.
    An example without the right passage always gets random ones, so "not covered" is learned where it is true.
    """
    retriever = _retriever(chunks, embedder) if distractors == "retrieved" else None
    out = []
    for i, chunk in enumerate(chunks):
        if not chunk.heading:
            continue
        for template in rng.sample(TEMPLATES, min(per_chunk, len(TEMPLATES))):
            question = template.format(topic=topic(chunk.heading))
            evidence = select_evidence(question, [as_passage(chunk)], embedder, max_sentences=2, tables=False,
                                       code=False)  # fmt: skip
            if not evidence:
                break
            others = [c for c in chunks if c.anchor != chunk.anchor]
            if rng.random() < none_share:
                passages, n = [(c.anchor, c.text) for c in rng.sample(others, min(size, len(others)))], None
            elif retriever is not None:
                passages, n = _retrieved(retriever, question, chunk, size, rng)
            else:
                drawn = [(c.anchor, c.text) for c in rng.sample(others, min(size - 1, len(others)))]
                passages, n = arrange((chunk.anchor, chunk.text), drawn, size, rng)
            answer = NOT_COVERED if n is None else " ".join(e.sentence.text for e in evidence) + f" [{n}]"
            out.append(example(question, passages, answer, source="notes", file=chunk.file, chunk=i,
                               covered=n is not None))  # fmt: skip
    return out


def _retriever(chunks: list[Chunk], embedder: Any) -> Any:
    """A hybrid retriever over ``chunks`` alone (the held-out notes are not in it)."""
    import numpy as np

    from llm_course.rag.index import RagIndex, embedding_dimension
    from llm_course.rag.retrieve import Retriever

    vectors = embedder.encode([c.for_embedding() for c in chunks], normalize_embeddings=True, convert_to_numpy=True)
    index = RagIndex(chunks, np.asarray(vectors, dtype=np.float32), {"dimension": embedding_dimension(embedder)})
    return Retriever(index, embedder)


def _retrieved(retriever: Any, question: str, chunk: Chunk, size: int,
               rng: random.Random) -> tuple[list[tuple[str, str]], int]:  # fmt: skip
    """The passages ``rag ask`` would give, with ``chunk``'s section among them; its number."""
    from llm_course.rag.answer import POOL
    from llm_course.rag.passages import merge_hits

    passages = merge_hits(retriever.search(question, "hybrid", (size + 1) * POOL).hits, size + 1)
    right = next((p for p in passages if p.anchor == chunk.anchor and chunk.text in p.text), None)
    others = [(p.anchor, p.text) for p in passages if p.anchor != chunk.anchor]
    if right is None:
        return arrange((chunk.anchor, chunk.text), others, size, rng)
    chosen = [(p.anchor, p.text) for p in passages if p is right or p.anchor != chunk.anchor][:size]
    if (right.anchor, right.text) not in chosen:  # ranked last: it takes the last place
        chosen[-1] = (right.anchor, right.text)
    return chosen, chosen.index((right.anchor, right.text)) + 1


def read_alpaca(path: str, max_output_chars: int = 400) -> list[dict[str, Any]]:
    """The ``ok`` records of an alpaca_libre-style file that have an ``input`` and a short enough ``output``."""
    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"--alpaca_file {path}: no such file (e.g. ../shared/data/instructions/"
                               "alpaca_libre.jsonl.gz, or leave it out to build from the notes only)")  # fmt: skip
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) | {"line": i} for i, line in enumerate(f) if line.strip()]  # line: its place
    return [r for r in rows if r.get("status", "ok") == "ok" and str(r.get("input", "")).strip()
            and 0 < len(str(r.get("output", "")).strip()) <= max_output_chars]  # fmt: skip


def alpaca_examples(records: list[dict[str, Any]], rng: random.Random, size: int = 3,
                    none_share: float = 0.15) -> list[dict[str, Any]]:  # fmt: skip
    """One example per record: its input among other records' inputs, its output plus the marker. A passage's
    source is ``alpaca_libre#record-<line of the file, from 0>``."""
    out = []
    for i, record in enumerate(records):
        others = rng.sample([j for j in range(len(records)) if j != i], min(size, len(records) - 1))
        label = lambda r: (f"alpaca_libre#record-{r['line']}", r["input"].strip())  # noqa: E731
        distractors = [label(records[j]) for j in others]
        right = None if rng.random() < none_share else label(record)
        passages, n = arrange(right, distractors, size, rng)
        answer = NOT_COVERED if n is None else f"{record['output'].strip()} [{n}]"
        out.append(example(record["instruction"].strip(), passages, answer, source="alpaca", record=record["line"],
                           covered=n is not None))  # fmt: skip
    return out


def raft_data(
    source: str = "notes",
    output_dir: str = "outputs/raft",
    alpaca_file: str | None = None,
    held_out: list[str] | None = None,
    max_alpaca: int = 300,
    passages: int = 3,
    none_share: float = 0.15,
    val_share: float = 0.1,
    max_tokens: int = 200,
    distractors: str = "random",
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``train.jsonl`` and ``val.jsonl`` (chat records) and ``raft_data.json`` (what went in) for the
    grounded-answer LoRA: ``llm-course fit --config configs/rag_lora.yaml``.

    Args:
        source: the notes folder (sections become questions and passages).
        output_dir: where the files go.
        alpaca_file: alpaca_libre-style records (``instruction``, ``input``, ``output``, ``status``); none: notes only.
        held_out: note files (as indexed, e.g. ``notes/07_inference_deployment.md``) that give no example, to
            measure answers on notes the adapter never saw.
        max_alpaca: at most this many alpaca records (a seeded sample).
        passages: passages per example (as ``rag ask --top_k``).
        none_share: share of examples without the right passage, answered with "not covered".
        val_share: share of examples held out for validation loss.
        max_tokens: chunk size in MiniLM tokens (as ``rag index``).
        distractors: for the notes' questions, ``random`` (other sections at random; the committed adapter's data)
            or ``retrieved`` (the passages hybrid retrieval gives for the question, as at answer time: harder
            distractors, and passages as long as ``rag ask`` gives).
        seed: seeds every choice.
    """
    from llm_course.rag.index import load_embedder

    rng = random.Random(seed)
    embedder = load_embedder("minilm")
    files = [p.as_posix() for p in find_files(source)]
    held = list(held_out or [])
    unknown = [h for h in held if h not in files]
    if unknown:
        raise ConfigError(f"--held_out {unknown} are not files under --source {source}: one of {files}")
    count = lambda text: len(embedder.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    chunks = [c for f in files if f not in held for c in split_file(f, Path(f).read_text(encoding="utf-8"), count,
                                                                    max_tokens)]  # fmt: skip
    if distractors not in ("retrieved", "random"):
        raise ConfigError(f"--distractors={distractors!r} is not one of: retrieved, random")
    rows = notes_examples(chunks, embedder, rng, passages, none_share, distractors=distractors)
    alpaca: list[dict[str, Any]] = []
    if alpaca_file:
        alpaca = read_alpaca(alpaca_file)
        alpaca = rng.sample(alpaca, min(max_alpaca, len(alpaca)))
        rows += alpaca_examples(alpaca, rng, passages, none_share)
    if len(rows) < 10:
        raise ConfigError(f"--source {source}: only {len(rows)} examples; give more notes or an --alpaca_file")
    rng.shuffle(rows)
    n_val = max(1, int(len(rows) * val_share))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("val", rows[:n_val]), ("train", rows[n_val:])):
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    summary = {
        "source": source, "alpaca_file": alpaca_file, "held_out": held, "seed": seed, "passages": passages,
        "distractors": distractors,
        "none_share": none_share, "train": len(rows) - n_val, "val": n_val,
        "by_source": {s: sum(r["source"] == s for r in rows) for s in ("notes", "alpaca")},
        "not_covered": sum(not r["covered"] for r in rows), "notes_used": sorted({c.file for c in chunks}),
    }  # fmt: skip
    atomic_write_text(out / "raft_data.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary
