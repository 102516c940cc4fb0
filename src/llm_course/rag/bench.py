"""``llm-course bench rag``: retrieval recall by mode, the abstention threshold, and answers on a sample."""

import json
import statistics
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from llm_course.errors import ConfigError, MissingFileError
from llm_course.rag.index import RagIndex, load_embedder
from llm_course.rag.retrieve import MODES, Retriever
from llm_course.reports import write_report

DEPTH = 10  # ranks looked at for MRR
SIGNALS = ("dense", "coverage", "mean")  # abstention signals compared (Retrieval.support)


def load_questions(path: str | None = None) -> list[dict[str, Any]]:
    """The evaluation set: the packaged one (questions about the course notes) or a JSONL file of the same shape."""
    if path is None:
        text = resources.files("llm_course.rag").joinpath("eval_questions.jsonl").read_text()
    elif not Path(path).is_file():
        raise MissingFileError(f"--questions {path}: no such file")
    else:
        text = Path(path).read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    bad = [r.get("id") for r in rows if r.get("answerable") and not (r.get("file") and r.get("heading"))]
    if bad:
        raise ConfigError(f"questions {bad}: answerable questions need a file and a heading")
    return rows


def is_gold(chunk: Any, question: dict[str, Any]) -> bool:
    return chunk.file.endswith(question["file"]) and chunk.heading == question["heading"]


def first_gold_rank(hits: list[Any], question: dict[str, Any]) -> int | None:
    return next((n for n, hit in enumerate(hits, start=1) if is_gold(hit.chunk, question)), None)


def retrieval_metrics(ranks: list[int | None]) -> dict[str, float]:
    n = len(ranks)
    out = {f"recall@{k}": sum(r is not None and r <= k for r in ranks) / n for k in (1, 3, 5)}
    out["mrr@10"] = sum(1 / r for r in ranks if r is not None) / n
    return {k: round(v, 4) for k, v in out.items()}


def abstention(scores: list[float], answerable: list[bool], threshold: float) -> dict[str, float]:
    """Correct abstentions (unanswerable below the threshold) and false ones (answerable below it), as rates."""
    no = [s for s, a in zip(scores, answerable, strict=True) if not a]
    yes = [s for s, a in zip(scores, answerable, strict=True) if a]
    return {"correct_abstention_rate": round(sum(s < threshold for s in no) / max(len(no), 1), 4),
            "false_abstention_rate": round(sum(s < threshold for s in yes) / max(len(yes), 1), 4),
            "unanswerable": len(no), "answerable": len(yes)}  # fmt: skip


def choose_threshold(scores: list[float], answerable: list[bool], max_false: float = 0.10) -> float:
    """The threshold with the most correct abstentions among those with at most ``max_false`` false ones (the
    highest such threshold), halfway between two observed scores."""
    cuts = sorted(set(scores))
    candidates = [0.0] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:], strict=False)] + [cuts[-1] + 1e-6]
    allowed = [t for t in candidates if abstention(scores, answerable, t)["false_abstention_rate"] <= max_false]
    return max(allowed, key=lambda t: (abstention(scores, answerable, t)["correct_abstention_rate"], t))


def bench_rag(
    output_dir: str = "outputs/bench",
    source: str = "notes",
    questions: str | None = None,
    answer_sample: int = 12,
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    max_new_tokens: int = 96,
    device: str = "cpu",
) -> dict[str, str]:
    """Recall@1/3/5 and MRR of dense, BM25 and hybrid retrieval on the evaluation questions; the abstention threshold
    chosen on the validation half (even positions) and scored on the test half (odd positions); generated answers
    on a sample of test questions (key words present, gold passage cited) with their latency.

    Targets: recall@3 >= 0.90 for the best mode; >= 80% correct abstentions with <= 10% false abstentions.

    Args:
        output_dir: where ``rag.json`` and ``rag.png`` go (and the index, in ``rag_index/``).
        source: the notes folder the questions are about.
        questions: a JSONL evaluation set (default: the packaged questions about the course notes).
        answer_sample: answerable test questions to generate answers for (0: retrieval only).
        model: the chat model that answers.
        adapter: a LoRA adapter folder from Module 6 to answer with.
        max_new_tokens: longest answer.
        device: cpu, cuda or auto.
    """
    rows = load_questions(questions)
    embedder = load_embedder("minilm", "cpu" if device == "auto" else device)
    start = time.perf_counter()
    index, _ = RagIndex.build(source, embedder)
    index.save(Path(output_dir) / "rag_index")
    build_s = time.perf_counter() - start
    retriever = Retriever(index, embedder)
    answerable = [r for r in rows if r["answerable"]]
    modes: dict[str, Any] = {}
    for mode in MODES:
        found = [retriever.search(q["question"], mode, DEPTH) for q in answerable]
        ranks = [first_gold_rank(f.hits, q) for f, q in zip(found, answerable, strict=True)]
        misses = [q["id"] for q, r in zip(answerable, ranks, strict=True) if r is None or r > 3]
        ms = round(statistics.median(f.ms for f in found), 2)
        modes[mode] = retrieval_metrics(ranks) | {"ms_median": ms, "misses_at_3": misses}
        print(f"{mode:>6}: {modes[mode]}", file=sys.stderr)
    best = max(MODES, key=lambda m: (modes[m]["recall@3"], modes[m]["mrr@10"]))
    found = [retriever.search(r["question"], best, 3) for r in rows]  # what the model would be given
    flags = [bool(r["answerable"]) for r in rows]
    val, test = slice(0, None, 2), slice(1, None, 2)
    signals = {}
    for signal in SIGNALS:
        scores = [f.support(signal) for f in found]
        threshold = choose_threshold(scores[val], flags[val])
        signals[signal] = {"threshold": round(threshold, 4),
                           "validation": abstention(scores[val], flags[val], threshold),
                           "test": abstention(scores[test], flags[test], threshold)}  # fmt: skip
    chosen = max(SIGNALS, key=lambda k: (signals[k]["validation"]["correct_abstention_rate"],
                                         -signals[k]["validation"]["false_abstention_rate"]))  # fmt: skip
    threshold = signals[chosen]["threshold"]
    scores = [f.support(chosen) for f in found]
    abstain = {"signal": chosen, "threshold": threshold, "chosen_on": "validation half (even positions)",
               "validation": signals[chosen]["validation"], "test": signals[chosen]["test"],
               "all": abstention(scores, flags, threshold), "by_signal": signals,
               "scores": [{"id": r["id"], "answerable": r["answerable"], "dense": round(f.best_dense, 4),
                           "coverage": round(f.coverage, 4), "support": round(s, 4)}
                          for r, f, s in zip(rows, found, scores, strict=True)]}  # fmt: skip
    print(f"abstention on {chosen} < {threshold:.3f}: test {abstain['test']}", file=sys.stderr)
    sample = [r for r in rows[test] if r["answerable"]][:answer_sample]
    answers = answer_some(retriever, sample, best, chosen, threshold, model, adapter, max_new_tokens,
                          device) if answer_sample else {}  # fmt: skip
    test_rates = abstain["test"]
    targets = {"best_mode": best, "recall@3_best": modes[best]["recall@3"], "recall@3_target": 0.90,
               "correct_abstention_test": test_rates["correct_abstention_rate"], "correct_abstention_target": 0.80,
               "false_abstention_test": test_rates["false_abstention_rate"],
               "false_abstention_target": 0.10}  # fmt: skip
    targets["met"] = (targets["recall@3_best"] >= 0.90 and targets["correct_abstention_test"] >= 0.80
                      and targets["false_abstention_test"] <= 0.10)  # fmt: skip
    results = {"source": source, "chunks": len(index.chunks), "files": len(index.file_hashes),
               "index_build_s": round(build_s, 2), "questions": {"answerable": len(answerable),
               "unanswerable": len(rows) - len(answerable)}, "retrieval": modes, "abstention": abstain,
               "answers": answers, "targets": targets}  # fmt: skip
    path = write_report(output_dir, "rag", results, rag_figure(results))
    print(json.dumps(targets, indent=2))
    return {"json": str(path), "png": str(Path(output_dir) / "rag.png")}


def answer_some(retriever: Retriever, sample: list[dict[str, Any]], mode: str, signal: str, threshold: float,
                model: str, adapter: str | None, max_new_tokens: int, device: str) -> dict[str, Any]:  # fmt: skip
    """Answer ``sample`` with the chat model: key words present, gold passage among the sources and cited."""
    from llm_course.inference.engine import GenerationEngine
    from llm_course.inference.sampling import SamplingParams
    from llm_course.rag.answer import NotesQA

    engine = GenerationEngine.load(model, adapter, "fp32", device)
    engine.warm_up()
    params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens, repetition_penalty=1.1)
    qa = NotesQA(retriever, engine, mode, 3, threshold, params, abstain_on=signal)
    details = []
    for q in sample:
        answer = qa.ask(q["question"])
        gold = [s["n"] for s in answer.sources if s["file"].endswith(q["file"]) and s["heading"] == q["heading"]]
        text = answer.text.lower()
        details.append({
            "id": q["id"], "question": q["question"], "answer": answer.text, "abstained": answer.abstained,
            "keywords": q["keywords"], "keywords_found": [k for k in q["keywords"] if k.lower() in text],
            "gold_in_sources": bool(gold), "gold_cited": any(f"[{n}]" in answer.text for n in gold),
            "any_citation": any(f"[{s['n']}]" in answer.text for s in answer.sources),
            "retrieval_ms": round(answer.retrieval.ms, 1), "generation_s": answer.as_dict()["generation_s"],
        })  # fmt: skip
        print(f"{q['id']}: keywords {len(details[-1]['keywords_found'])}/{len(q['keywords'])}, "
              f"gold cited {details[-1]['gold_cited']}, {details[-1]['generation_s']} s", file=sys.stderr)
    n = len(details)
    gen = [d["generation_s"] for d in details if d["generation_s"] is not None]
    return {"mode": mode, "n": n, "details": details,
            "all_keywords_rate": round(sum(len(d["keywords_found"]) == len(d["keywords"]) for d in details) / n, 4),
            "keyword_recall": round(sum(len(d["keywords_found"]) / len(d["keywords"]) for d in details) / n, 4),
            "gold_in_sources_rate": round(sum(d["gold_in_sources"] for d in details) / n, 4),
            "gold_cited_rate": round(sum(d["gold_cited"] for d in details) / n, 4),
            "any_citation_rate": round(sum(d["any_citation"] for d in details) / n, 4),
            "generation_s_median": statistics.median(gen) if gen else None,
            "retrieval_ms_median": statistics.median(d["retrieval_ms"] for d in details)}  # fmt: skip


def rag_figure(results: dict[str, Any]) -> Any:
    """Recall@k and MRR per retrieval mode; the closest chunk's cosine for answerable vs unanswerable questions."""
    from llm_course.plotting import subplots

    fig, (a, b) = subplots(1, 2, figsize=(12, 4.2))
    metrics = ["recall@1", "recall@3", "recall@5", "mrr@10"]
    width = 0.8 / len(MODES)
    for i, mode in enumerate(MODES):
        values = [results["retrieval"][mode][m] for m in metrics]
        bars = a.bar([j + i * width for j in range(len(metrics))], values, width, label=mode)
        a.bar_label(bars, fmt="%.2f", fontsize=7)
    a.axhline(0.90, color="grey", lw=1, ls="--", label="recall@3 target")
    a.set_xticks([j + width for j in range(len(metrics))], metrics)
    a.set(ylim=(0, 1.05), title=f"retrieval, {results['questions']['answerable']} answerable questions")
    a.legend(fontsize=8, loc="lower right")
    scores = results["abstention"]["scores"]
    for answerable, label in ((True, "answerable"), (False, "not in the notes")):
        b.hist([s["support"] for s in scores if s["answerable"] == answerable], bins=20, alpha=0.6, label=label)
    b.axvline(results["abstention"]["threshold"], color="black", lw=1, label="abstention threshold")
    signal = results["abstention"]["signal"]
    b.set(xlabel=f"support ({signal})", ylabel="questions", title="abstain below the threshold")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig
