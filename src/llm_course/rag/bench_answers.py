"""``bench rag``'s answer part: every answer mode on the same questions, scored alike.

For each chat model (the base model, and the grounded-answer LoRA when given) every question is answered once by
generation; the modes that differ only after generation (``generate`` or ``both``, support check on or off) are
composed from that one reply by :meth:`NotesQA.finish`, so they are compared on identical text.
"""

import copy
import statistics
import sys
import time
from typing import Any

from llm_course.rag.answer import NotesQA
from llm_course.rag.prompt import cited


def score_answer(answer: Any, question: dict[str, Any]) -> dict[str, Any]:
    """Key words found (all of them = a hit), citations of given passages, the gold passage cited, and the share
    of generated sentences that passed the support check."""
    text = answer.text.lower()
    given = {p.n for p in answer.passages}
    gold = [p.n for p in answer.passages if p.file.endswith(question["file"] or "\0")
            and p.heading == question["heading"]]  # fmt: skip
    marks = [n for n in cited(answer.text) if n in given] if not answer.abstained else []
    shown = answer.shown_generated
    return {
        "id": question["id"], "abstained": answer.abstained, "answerable": question["answerable"],
        "keywords_found": [k for k in question["keywords"] if k.lower() in text],
        "keyword_hit": bool(question["keywords"]) and all(k.lower() in text for k in question["keywords"]),
        "cites_given_passage": bool(marks), "gold_given": bool(gold), "gold_cited": bool(set(marks) & set(gold)),
        "generated_sentences": len(answer.checked), "supported_sentences": sum(c.supported for c in answer.checked),
        "shown_generated_sentences": len(shown), "answer": answer.text,
    }  # fmt: skip


def summarize(rows: list[dict[str, Any]], seconds: list[float]) -> dict[str, Any]:
    answered = [r for r in rows if r["answerable"] and not r["abstained"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    answerable = [r for r in rows if r["answerable"]]
    generated = sum(r["generated_sentences"] for r in rows)

    def rate(items: list[dict[str, Any]], key: str) -> float | None:
        return round(sum(bool(r[key]) for r in items) / len(items), 4) if items else None

    return {
        "answered": len(answered), "keyword_hit_rate": rate(answered, "keyword_hit"),
        "cites_given_passage_rate": rate(answered, "cites_given_passage"),
        "gold_cited_rate": rate(answered, "gold_cited"),
        "generated_sentences": generated,
        "supported_share": round(sum(r["supported_sentences"] for r in rows) / generated, 4) if generated else None,
        "shown_generated_sentences": sum(r["shown_generated_sentences"] for r in rows),
        "correct_abstention_rate": rate(unanswerable, "abstained"),
        "false_abstention_rate": rate(answerable, "abstained"),
        "seconds_per_answer_median": round(statistics.median(seconds), 3) if seconds else None,
    }  # fmt: skip


def variants(model_name: str) -> list[tuple[str, str, bool]]:
    """(row name, answer mode, support check) composed from one generation of ``model_name``."""
    return [(f"{model_name} generate", "generate", True), (f"{model_name} generate, no check", "generate", False),
            (f"{model_name} both", "both", True)]  # fmt: skip


def answer_modes(qa: NotesQA, engines: dict[str, Any], questions: list[dict[str, Any]],
                 groups: dict[str, set[str]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Per answer mode: the summary over ``questions`` (and over each group of question ids, e.g. held-in and
    held-out notes) and the per-question rows. ``engines`` maps a name (``base``, ``lora``) to a loaded engine."""
    rows: dict[str, list[dict[str, Any]]] = {"extractive": []}
    seconds: dict[str, list[float]] = {"extractive": []}
    extractive = copy.copy(qa)
    extractive.answer, extractive.engine = "extractive", None
    for q in questions:
        start = time.perf_counter()
        rows["extractive"].append(score_answer(extractive.ask(q["question"]), q))
        seconds["extractive"].append(time.perf_counter() - start)
    for name, engine in engines.items():
        generating = copy.copy(qa)
        generating.engine, generating.answer = engine, "generate"
        for q in questions:
            start = time.perf_counter()
            prepared = generating.prepare(q["question"])
            reply, stats = (None, None) if prepared.messages is None else engine.generate(prepared.messages,
                                                                                          prepared.params)  # fmt: skip
            spent = time.perf_counter() - start
            for row, mode, check in variants(name):
                composer = copy.copy(generating)
                composer.answer, composer.check = mode, check
                rows.setdefault(row, []).append(score_answer(composer.finish(prepared, reply, stats), q))
                seconds.setdefault(row, []).append(spent)
            last = rows[f"{name} generate"][-1]
            print(f"{name} {q['id']}: keywords {len(last['keywords_found'])}/{len(q['keywords'])}, "
                  f"supported {last['supported_sentences']}/{last['generated_sentences']}, {spent:.1f} s",
                  file=sys.stderr)  # fmt: skip
    out = {}
    for row, items in rows.items():
        out[row] = {"all": summarize(items, seconds[row]), "rows": items}
        for group, ids in (groups or {}).items():
            picked = [i for i, r in enumerate(items) if r["id"] in ids]
            out[row][group] = summarize([items[i] for i in picked], [seconds[row][i] for i in picked])
    return out
