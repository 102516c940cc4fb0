"""Scoring for ``bench agent``: the labelled messages and tasks, and the metrics of one variant on one split."""

import json
import re
import statistics
from importlib import resources
from pathlib import Path
from typing import Any

from llm_course.errors import ConfigError, MissingFileError

SPLITS = ("validation", "test")


def load_jsonl(name: str, path: str | None = None, package: str = "llm_course.agent") -> list[dict[str, Any]]:
    """A packaged JSONL file (``name`` in ``package``) or ``path``, checked to have ids and a split each."""
    if path is None:
        text = resources.files(package).joinpath(name).read_text()
    elif not Path(path).is_file():
        raise MissingFileError(f"{path}: no such file")
    else:
        text = Path(path).read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    bad = [r.get("id") for r in rows if r.get("split") not in SPLITS]
    if bad:
        raise ConfigError(f"{name}: rows {bad} need a split of: {', '.join(SPLITS)}")
    return rows


def args_right(row: dict[str, Any], name: str | None, arguments: dict[str, Any], pages: list[str] | None) -> bool:
    """Whether the call's arguments are the labelled ones: the same order number or hand-over reason; for a
    help-centre search, a query whose passages (``pages``) include the page that answers the message."""
    gold = row["action"]
    if name != gold["tool"]:
        return False
    if name == "search_help":
        return row["page"] in (pages or [])
    return arguments == gold["arguments"]


def rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def desk_metrics(rows: list[dict[str, Any]], outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of one variant over ``rows``; each outcome holds ``decision`` (or None for rules), ``action``,
    ``pages`` (of a search), ``citations`` (of the reply) and ``seconds``."""
    json_ok = [o["decision"]["json"] for o in outcomes if o["decision"] is not None]
    valid = [o["decision"]["valid"] for o in outcomes if o["decision"] is not None]
    tool_ok = [o["action"]["tool"] == r["action"]["tool"] for r, o in zip(rows, outcomes, strict=True)]
    right = [args_right(r, o["action"]["tool"], o["action"]["arguments"], o.get("pages"))
             for r, o in zip(rows, outcomes, strict=True)]  # fmt: skip
    gold_ho = [r["action"]["tool"] == "hand_over" for r in rows]
    pred_ho = [o["action"]["tool"] == "hand_over" for o in outcomes]
    tp = sum(g and p for g, p in zip(gold_ho, pred_ho, strict=True))
    cited = [any(re.search(rf"(^|[\s/]){re.escape(r['page'])}", c) for c in o["citations"])
             for r, o in zip(rows, outcomes, strict=True) if r["page"]]  # fmt: skip
    return {
        "messages": len(rows),
        "calls_json": rate(json_ok),
        "calls_valid": rate(valid),
        "right_tool": rate(tool_ok),
        "right_action": rate(right),
        "right_arguments_given_right_tool": rate([a for a, t in zip(right, tool_ok, strict=True) if t]),
        "handover_precision": round(tp / sum(pred_ho), 4) if sum(pred_ho) else None,
        "handover_recall": round(tp / sum(gold_ho), 4) if sum(gold_ho) else None,
        "cites_right_page": rate(cited),
        "seconds_per_message": round(statistics.mean(o["seconds"] for o in outcomes), 4) if outcomes else None,
        "wrong": [
            {
                "id": r["id"],
                "message": r["message"],
                "expected": r["action"],
                "got": o["action"],
                "raw": (o["decision"] or {}).get("raw"),
            }
            for r, o, ok in zip(rows, outcomes, right, strict=True)
            if not ok
        ],  # fmt: skip
    }


def sentiment_metrics(rows: list[dict[str, Any]], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy on the labelled sentiments the classifier can say: with a two-label classifier (Module 3's IMDb
    model) "angry" counts as negative and neutral messages are left out."""
    gold = [r["sentiment"] for r in rows]
    if "angry" not in labels:
        gold = ["negative" if g == "angry" else g for g in gold]
    pairs = [(g, p) for g, p in zip(gold, predicted, strict=True) if g in labels]
    return {"accuracy": rate([g == p for g, p in pairs]), "scored": len(pairs), "labels": labels}


def task_metrics(tasks: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Agent tasks: first call valid, right tool, right arguments (the calculation's value, or a search whose
    citations hold the note that answers), answered with ``final_answer``, answer right, steps and seconds."""
    first_valid, tool_ok, args_ok, answered, correct = [], [], [], [], []
    for task, run in zip(tasks, runs, strict=True):
        steps = run["steps"]
        first = steps[0]["call"] if steps else None
        first_valid.append(bool(first and first["valid"]))
        calls = [s for s in steps if s["tool"] == task["tool"] and s["error"] is None]
        tool_ok.append(bool(first and first["name"] == task["tool"]))
        if task["tool"] == "calculate":
            good = any(_close(s["result"], task["value"]) for s in calls)
            right_answer = good and _number_in(run["answer"] or "", task["value"])
        else:
            cited = " ".join(c for s in calls for c in (s["result"] or {}).get("citations", []))
            good = any(f in cited for f in task["files"])
            right_answer = good and run["answer"] is not None
        args_ok.append(good)
        answered.append(run["stopped"] == "answer")
        correct.append(right_answer)
    return {"tasks": len(tasks), "first_call_valid": rate(first_valid), "right_tool": rate(tool_ok),
            "right_arguments": rate(args_ok), "answered": rate(answered), "answer_right": rate(correct),
            "steps_mean": round(statistics.mean(len(r["steps"]) for r in runs), 2) if runs else None,
            "seconds_per_task": round(statistics.mean(r["seconds"] for r in runs), 3) if runs else None}  # fmt: skip


def _close(value: Any, expected: float) -> bool:
    return isinstance(value, int | float) and abs(value - expected) <= 1e-6 * max(1.0, abs(expected))


def _number_in(text: str, expected: float) -> bool:
    shown = f"{expected:g}" if isinstance(expected, float) else str(expected)
    return shown in text.replace(",", "")
