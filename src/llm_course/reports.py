"""Benchmark and test reports as data: one JSON of measured numbers (with machine, versions and command).

No plotting here; a figure, when there is one, comes in as a ``matplotlib.figure.Figure`` and is only saved.
"""

import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from llm_course.envinfo import environment_report, versions


def machine() -> dict[str, Any]:
    report = environment_report()
    keys = ("platform", "devices", "cpu_count", "torch_threads", "memory_total_gb")
    return {"processor": platform.processor() or platform.machine(), **{k: report[k] for k in keys}}


def command_line() -> str:
    """The command that is running, as the user typed it (``llm-course ...`` for the console script)."""
    if Path(sys.argv[0]).name == "llm-course":
        return " ".join(["llm-course", *sys.argv[1:]])
    return " ".join(sys.argv)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: a reader sees the old
    file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report(output_dir: str | Path, name: str, results: dict[str, Any], figure: Any | None = None) -> Path:
    """Write ``<output_dir>/<name>.json`` (results + machine + versions + command) and ``<name>.png``.

    Returns:
        The path of the JSON file.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**results, "machine": machine(), "versions": versions(), "command": command_line()}
    path = out / f"{name}.json"
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    if figure is not None:
        figure.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    return path


def classification_report(cm: Any, class_names: list[str] | tuple[str, ...]) -> str:
    """Per-class precision, recall, F1 and support from a confusion matrix, plus accuracy and macro averages."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    width = max(12, *(len(n) for n in class_names))
    lines = [f"{'':>{width}}  precision  recall  f1-score  support"]
    for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True):
        lines.append(f"{name:>{width}}  {p:9.4f}  {r:6.4f}  {f:8.4f}  {int(s):7d}")
    total = int(cm.sum())
    lines += [
        "",
        f"{'accuracy':>{width}}  {'':9}  {'':6}  {tp.sum() / max(total, 1):8.4f}  {total:7d}",
        f"{'macro avg':>{width}}  {precision.mean():9.4f}  {recall.mean():6.4f}  {f1.mean():8.4f}  {total:7d}",
    ]
    return "\n".join(lines) + "\n"
