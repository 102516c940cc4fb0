"""Benchmark reports: one JSON of measured numbers (with machine, versions and command) plus a figure."""

import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # benchmarks run headless
import matplotlib.pyplot as plt  # noqa: E402

from llm_course.envinfo import environment_report, versions  # noqa: E402


def machine() -> dict[str, Any]:
    report = environment_report()
    keys = ("platform", "devices", "cpu_count", "torch_threads", "memory_total_gb")
    return {"processor": platform.processor() or platform.machine(), **{k: report[k] for k in keys}}


def write_report(output_dir: str | Path, name: str, results: dict[str, Any], figure: plt.Figure | None) -> Path:
    """Write ``<output_dir>/<name>.json`` (results + machine + versions + command) and ``<name>.png``.

    Returns:
        The path of the JSON file.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        **results,
        "machine": machine(),
        "versions": versions(),
        "command": " ".join(["llm-course", *sys.argv[1:]])
        if sys.argv[0].endswith("llm-course")
        else " ".join(sys.argv),
    }
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    if figure is not None:
        figure.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
        plt.close(figure)
    return path


def plot_confusion_matrix(
    cm: Any, class_names: list[str] | tuple[str, ...], title: str = "Confusion matrix", ax: plt.Axes | None = None
) -> plt.Figure:
    """Heat map of a confusion matrix (rows: true class, columns: predicted), with counts in the cells.

    Draws into ``ax`` when given (a panel of a larger figure), else into a new figure.
    """
    import numpy as np

    cm = np.asarray(cm)
    k = len(cm)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.55 * k), max(4.0, 0.8 + 0.5 * k)))
    ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > threshold else "black")  # fmt: skip
    ax.figure.tight_layout()
    return ax.figure


def classification_report(cm: Any, class_names: list[str] | tuple[str, ...]) -> str:
    """Per-class precision, recall, F1 and support from a confusion matrix, plus accuracy and macro averages."""
    import numpy as np

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


@dataclass
class FitTestRun:
    """What :func:`fit_then_test` measured: the CLI objects, per-validation history, timings, test metrics."""

    cli: Any
    history: list[dict[str, float]]
    train_seconds: float
    test_seconds: float
    test: dict[str, float]


def fit_then_test(args: list[str], before_fit: Callable[[Any], None] | None = None) -> FitTestRun:
    """Build a task from CLI ``args`` (a config plus overrides), fit it, then test its best checkpoint once.

    Args:
        args: ``llm-course fit`` arguments without the subcommand (``["--config", path, ...]``).
        before_fit: called with the CLI before training starts (e.g. to prepare data outside the timing).
    """
    from llm_course.callbacks import History
    from llm_course.cli import CourseCLI

    cli = CourseCLI([*args, "--trainer.enable_progress_bar=false"], run=False)
    history = History()
    cli.trainer.callbacks.append(history)
    if before_fit is not None:
        before_fit(cli)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    middle = time.perf_counter()
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    return FitTestRun(cli, history.epochs, middle - start, time.perf_counter() - middle, test)
