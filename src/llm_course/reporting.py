"""Benchmark reports: one JSON of measured numbers (with machine, versions and command) plus a figure."""

import json
import platform
import sys
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
        "command": " ".join(["llm-course", *sys.argv[1:]]) if sys.argv[0].endswith("llm-course") else " ".join(sys.argv),
    }
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    if figure is not None:
        figure.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
        plt.close(figure)
    return path
