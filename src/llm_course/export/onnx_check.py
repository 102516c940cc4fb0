"""What ``llm-course export onnx`` measures: held texts, logit agreement, alternating latency, int8 quantization.

Plain functions over texts, arrays and callables; nothing here loads a model, so each piece is testable alone.
"""

import gzip
import json
import logging
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llm_course.errors import ConfigError, MissingFileError

# Used when no --check_file is given: no labels, so the check reports agreement with PyTorch only.
SENTENCES = [
    "A wonderful, moving film with a clever plot.",
    "The acting was wooden and the story made no sense.",
    "I loved every minute of it and would watch it again.",
    "Two hours of my life I will never get back.",
    "The soundtrack is great, but the second half drags.",
    "An instant classic: funny, sharp and beautifully shot.",
    "Boring, predictable and far too long.",
    "Not the best film of the year, yet worth seeing for the lead performance.",
]


class ExportMismatchError(RuntimeError):
    """The exported model computes something else than the PyTorch model (an exporter or runtime bug)."""


def read_check_file(
    path: str, label_names: list[str], max_samples: int | None = None, seed: int = 42
) -> tuple[list[str], np.ndarray | None]:
    """Texts and label ids from a JSONL file (``.jsonl`` or ``.jsonl.gz``) with ``text`` and ``label`` fields.

    Labels may be ids or names from ``label_names``; if any row has no label, none is used. ``max_samples`` keeps
    a seeded random subset, in file order (IMDb's files are sorted by label, so the first rows are all negative).

    Raises:
        MissingFileError: the file does not exist.
        ConfigError: a line is not a JSON object with a ``text`` string, or a label is unknown.
    """
    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"--check_file: {path} does not exist (a JSONL file with text and label fields)")
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rt", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    if max_samples is not None and len(lines) > max_samples:
        keep = sorted(random.Random(seed).sample(range(len(lines)), max_samples))
        lines = [lines[i] for i in keep]
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--check_file {path}: a line is not JSON ({err})") from err
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ConfigError(f"--check_file {path}: row {n} has no 'text' string; each line needs text (and label)")
        rows.append(row)
    if not rows:
        raise ConfigError(f"--check_file {path} holds no rows")
    if any(row.get("label") is None for row in rows):
        return [row["text"] for row in rows], None
    ids = []
    for row in rows:
        label = row["label"]
        if isinstance(label, str) and label in label_names:
            label = label_names.index(label)
        if not isinstance(label, int) or not 0 <= label < len(label_names):
            raise ConfigError(
                f"--check_file {path}: label {row['label']!r} is not an id in [0, {len(label_names)}) nor one of "
                f"the model's labels {label_names}"
            )
        ids.append(label)
    return [row["text"] for row in rows], np.asarray(ids)


def fidelity(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """How far ``logits`` are from the PyTorch ``reference``: largest difference, prediction agreement, accuracy."""
    predictions = logits.argmax(-1)
    out = {
        "max_abs_logit_diff": float(np.abs(reference - logits).max()),
        "agreement": float((predictions == reference.argmax(-1)).mean()),
    }
    if labels is not None:
        out["accuracy"] = float((predictions == labels).mean())
    return out


def raise_on_mismatch(row: dict[str, float], atol: float, onnx_file: Path) -> None:
    """Raise unless the fp32 ONNX logits are within ``atol`` of PyTorch's and every prediction is the same.

    Raises:
        ExportMismatchError: the message gives both numbers and the file, kept for inspection.
    """
    if row["max_abs_logit_diff"] <= atol and row["agreement"] == 1.0:
        return
    raise ExportMismatchError(
        f"{onnx_file} does not compute what the PyTorch model does: max |logit difference| "
        f"{row['max_abs_logit_diff']:.3g} (allowed {atol:g}), same prediction for {row['agreement']:.2%} of the "
        "check texts (needed: all). Try the other --exporter, or another --opset."
    )


def median_latency(runs: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds of each call, timed in turn (alternating, so a noisy machine hits all alike)."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: round(1000 * statistics.median(t), 3) for name, t in times.items()}


# /proc/cpuinfo flags of x86 CPUs whose int8 dot products add in 32 bits (onnxruntime's MLAS uses them).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path) -> set[str] | None:
    """The ``flags`` of the first CPU in a ``/proc/cpuinfo`` file; None when unreadable or it has none."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def int8_weight_range(
    reduce_range: bool | str = "auto", arch: str | None = None, cpuinfo: Path | None = None
) -> dict[str, Any]:
    """Whether to quantize weights to 7 bits (``reduce_range``) for the CPU this runs on, and why.

    Without VNNI, onnxruntime's x86 u8×s8 kernels (AVX2, AVX-512 before VNNI) add pairs of products in a
    saturating int16 (``vpmaddubsw``): 2 × 255 × 127 overflows it, 2 × 255 × 64 does not. VNNI and AMX add in int32,
    and onnxruntime's ARM kernels need no reduction either (its ``quantize_static`` guidance: ``reduce_range=False``
    on ARM); where the CPU is not known, 7 bits are the safe choice.

    Args:
        reduce_range: ``auto`` decides from the CPU; a bool is used as given.
        arch: ``platform.machine()`` when None.
        cpuinfo: ``/proc/cpuinfo`` when None.

    Returns:
        ``{"reduce_range": bool, "reason": str}``, as ``export.json`` records it under ``int8``.
    """
    if isinstance(reduce_range, bool):
        return {"reduce_range": reduce_range, "reason": f"set by --reduce_range {str(reduce_range).lower()}"}
    if reduce_range != "auto":
        raise ConfigError(f"--reduce_range {reduce_range!r} is not one of: auto, true, false")
    arch = (arch or platform.machine()).lower()
    if arch in ("aarch64", "arm64"):
        return {"reduce_range": False, "reason": f"{arch} CPU: 8-bit weights, as onnxruntime advises for ARM"}
    if arch not in ("x86_64", "amd64", "x86", "i386", "i686"):
        return {"reduce_range": True, "reason": f"unknown CPU architecture {arch!r}: 7-bit weights, the safe choice"}
    cpuinfo = cpuinfo or CPUINFO
    flags = cpu_flags(cpuinfo)
    if flags is None:
        reason = f"no CPU flags readable from {cpuinfo}: 7-bit weights, safe on every x86 CPU"
        return {"reduce_range": True, "reason": reason}
    found = [flag for flag in VNNI_FLAGS if flag in flags]
    if found:
        return {"reduce_range": False, "reason": f"CPU has {found[0]}: 8-bit weights, int8 products add in int32"}
    return {"reduce_range": True,
            "reason": "CPU has no AVX512-VNNI/AVX-VNNI/AMX: 7-bit weights avoid u8s8 saturation"}  # fmt: skip


def quantize_int8(source: Path, target: Path, reduce_range: bool = False) -> Path:
    """onnxruntime's dynamic quantization: int8 weights (7-bit with ``reduce_range``), activations quantized on the
    fly per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Silences its advice to pre-process first: that step's symbolic shape inference fails on these graphs.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, reduce_range=reduce_range)
    finally:
        root.setLevel(level)
    return target


def onnx_versions() -> dict[str, str]:
    """The versions of the ONNX packages (``reports.write_report`` records the course's main libraries)."""
    from importlib import metadata

    return {name: metadata.version(name) for name in ("onnx", "onnxruntime")}


def megabytes(*files: Path) -> float:
    return round(sum(f.stat().st_size for f in files) / 2**20, 3)


def summary_table(variants: dict[str, dict[str, Any]], threads: list[int]) -> str:
    """One row per model form: accuracy (when labelled), agreement, logit difference, size and latencies."""
    labelled = any("accuracy" in row for row in variants.values())
    head = f"{'':<10}" + (f"{'accuracy':>9}" if labelled else "") + f"{'agree':>8}{'max|Δlogit|':>13}{'MB':>9}"
    head += "".join(f"{f'ms@{n}thr':>10}" for n in threads)
    lines = [head]
    for name, row in variants.items():
        line = f"{name:<10}" + (f"{row.get('accuracy', float('nan')):>9.4f}" if labelled else "")
        line += f"{row['agreement']:>8.4f}{row['max_abs_logit_diff']:>13.2e}{row['size_mb']:>9.2f}"
        line += "".join(f"{row['latency_ms'][str(n)]:>10.2f}" for n in threads)
        lines.append(line)
    return "\n".join(lines)
