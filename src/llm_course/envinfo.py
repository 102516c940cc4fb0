"""``llm-course env``: what this machine offers for training, in one report."""

import json
import os
import platform
from importlib import metadata

import psutil
import torch

PACKAGES = (
    "lightning", "torchmetrics", "transformers", "datasets", "peft", "bitsandbytes", "accelerate",
    "sentence-transformers", "gradio", "jsonargparse",
)  # fmt: skip


def versions() -> dict[str, str]:
    """Installed versions of Python, torch and the course's main libraries (``missing`` if absent)."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def environment_report() -> dict[str, object]:
    """Versions, accelerators, CPU threads, memory and the seed a run would use."""
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    mem = psutil.virtual_memory()
    return {
        "versions": versions(),
        "platform": platform.platform(),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn_available": torch.backends.cudnn.is_available(),
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "devices": devices or ["cpu"],
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else True,
        "mps_available": torch.backends.mps.is_available(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_total_gb": round(mem.total / 2**30, 1),
        "memory_available_gb": round(mem.available / 2**30, 1),
        # The CLI seeds every run with 42 unless --seed_everything says otherwise; PL_GLOBAL_SEED is the
        # seed of the current process once seed_everything has run.
        "seed": int(os.environ.get("PL_GLOBAL_SEED", 42)),
        "seed_source": "PL_GLOBAL_SEED" if "PL_GLOBAL_SEED" in os.environ else "CLI default (--seed_everything)",
    }


def env(as_json: bool = False) -> dict[str, object]:
    """Print an environment report: Python, torch, CUDA/cuDNN, devices, library versions, threads, memory, seed.

    Args:
        as_json: print JSON instead of a table.
    """
    report = environment_report()
    if as_json:
        print(json.dumps(report, indent=2))
        return report
    from rich.console import Console
    from rich.table import Table

    table = Table(title="llm-course environment", show_header=False)
    for key, value in report.items():
        if isinstance(value, dict):
            for name, version in value.items():
                table.add_row(name, str(version))
        else:
            table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    Console().print(table)
    return report
