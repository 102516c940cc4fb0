"""Peak-memory measurement that can be reset: the CUDA allocator's peak on a GPU, the resident-set peak on a CPU."""

import resource
import sys
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")  # writing "5" resets VmHWM (Linux >= 4.0)


def current_mb(device: torch.device | str = "cpu") -> float:
    """Memory in use now, in MiB: allocated CUDA memory, or this process's resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def reset_peak(device: torch.device | str = "cpu") -> bool:
    """Start a new peak window. Returns False where the CPU peak cannot be reset (then the peak is since start)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_mb(device: torch.device | str = "cpu") -> float:
    """Peak memory in MiB since the last :func:`reset_peak` (or since the process started)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)
