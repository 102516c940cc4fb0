"""``llm-course env``: what this machine offers for training, in one report.

Besides versions and devices it shows what a multi-process run depends on: the distributed backends this torch
was built with, the NCCL version, GPU peer-to-peer access, the launch variables that torchrun, SLURM or a user set,
and a warning for each launch mistake it can spot. It imports torch only (no Lightning), so it stays fast.
"""

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import psutil
import torch
import torch.distributed as dist

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


# What torchrun (and Lightning's own launcher, SLURM via Lightning, accelerate launch) reads or sets per process.
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE",
               "CUDA_VISIBLE_DEVICES")  # fmt: skip
HIDDEN = ("", "-1", "none", "nodevfiles")  # CUDA_VISIBLE_DEVICES values that show no GPU at all


def distributed_backends() -> dict[str, bool]:
    """The ``torch.distributed`` backends this torch build offers (gloo for CPU, NCCL for NVIDIA GPUs, MPI)."""
    if not dist.is_available():
        return {"gloo": False, "nccl": False, "mpi": False}
    return {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available(), "mpi": dist.is_mpi_available()}


def nccl_version() -> str | None:
    """The NCCL version torch was built with, where CUDA and NCCL exist (else None)."""
    if not (torch.cuda.is_available() and dist.is_available() and dist.is_nccl_available()):
        return None
    try:
        version = torch.cuda.nccl.version()
    except (RuntimeError, AttributeError):
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def launch_env(environ: Mapping[str, str]) -> dict[str, str | None]:
    """:data:`LAUNCH_VARS` (None where unset) and every ``NCCL_*`` variable that is set."""
    out: dict[str, str | None] = {name: environ.get(name) for name in LAUNCH_VARS}
    out.update({name: environ[name] for name in sorted(environ) if name.startswith("NCCL_")})
    return out


def peer_access(gpu_count: int) -> dict[str, bool]:
    """Whether GPU ``i`` can read GPU ``j``'s memory directly (NVLink or PCIe P2P), for every ordered pair."""
    return {f"{i}->{j}": torch.cuda.can_device_access_peer(i, j)
            for i in range(gpu_count) for j in range(gpu_count) if i != j}  # fmt: skip


def physical_gpus() -> int | None:
    """NVIDIA GPUs the driver sees, whatever ``CUDA_VISIBLE_DEVICES`` says (0 on Linux without the NVIDIA
    driver); None off Linux, where this cannot be told."""
    if platform.system() != "Linux":
        return None
    folder = Path("/proc/driver/nvidia/gpus")
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def gpu_topology() -> list[str]:
    """``nvidia-smi topo -m``: how each GPU pair is linked (NV# = NVLink, PIX/PXB/PHB/SYS = PCIe hops)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.rstrip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _int(environ: Mapping[str, str], name: str, warnings: list[str]) -> int | None:
    if name not in environ:
        return None
    try:
        return int(environ[name])
    except ValueError:
        warnings.append(f"{name}={environ[name]!r} is not an integer; torch.distributed cannot start with it.")
        return None


def launch_warnings(environ: Mapping[str, str], gpu_count: int, peers: Mapping[str, bool],
                    physical: int | None) -> list[str]:  # fmt: skip
    """Common launch mistakes visible in the environment, one sentence each (what is wrong, what to do).

    Args:
        environ: the process environment (``os.environ``).
        gpu_count: GPUs this process sees.
        peers: :func:`peer_access` of those GPUs.
        physical: GPUs the driver sees (:func:`physical_gpus`), None where unknown.
    """
    found: list[str] = []
    world, rank = _int(environ, "WORLD_SIZE", found), _int(environ, "RANK", found)
    local_rank, local_world = _int(environ, "LOCAL_RANK", found), _int(environ, "LOCAL_WORLD_SIZE", found)
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
    if "WORLD_SIZE" in environ and missing:
        found.append(
            f"WORLD_SIZE={environ['WORLD_SIZE']} is set but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not: the processes have no address to meet at and "
            "init_process_group fails or waits. Launch with torchrun (it sets all of them), or set "
            "MASTER_ADDR=<rank-0 host> MASTER_PORT=<free port> too; unset WORLD_SIZE for a one-process run."
        )
    if world is not None and rank is not None and not 0 <= rank < world:
        found.append(f"RANK={rank} with WORLD_SIZE={world}: ranks run from 0 to WORLD_SIZE-1, so this process "
                     "never joins the group. Each process needs its own RANK below WORLD_SIZE.")  # fmt: skip
    if local_rank is not None and rank is None:
        found.append(
            f"LOCAL_RANK={local_rank} is set but RANK is not: the launcher set only half of the rank "
            "variables (or a shell left LOCAL_RANK behind). Launch with torchrun, or unset LOCAL_RANK."
        )
    if local_rank is not None and local_world is not None and not 0 <= local_rank < local_world:
        found.append(f"LOCAL_RANK={local_rank} with LOCAL_WORLD_SIZE={local_world}: local ranks run from 0 to "
                     "LOCAL_WORLD_SIZE-1.")  # fmt: skip
    if local_rank is not None and gpu_count and local_rank >= gpu_count:
        found.append(
            f"LOCAL_RANK={local_rank} but this process sees {gpu_count} GPU(s): cuda:{local_rank} does "
            "not exist (invalid device ordinal). Start at most one process per visible GPU."
        )
    p2p_off = environ.get("NCCL_P2P_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    if p2p_off and any(peers.values()):
        found.append(
            f"NCCL_P2P_DISABLE={environ['NCCL_P2P_DISABLE']} on GPUs that can access each other's memory directly: "
            "NCCL copies through host memory instead, and all-reduce gets slower. Unset it unless it works "
            "around a hang you have seen (then report the driver/topology problem)."
        )
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    # Where the driver's GPU count is unknown, only a value that cannot name any GPU ("", -1) is a sure sign.
    if visible is not None and gpu_count == 0 and (physical or (physical is None and visible.lower() in HIDDEN)):
        machine = f"all {physical} GPU(s) of this machine" if physical else "every GPU"
        found.append(f"CUDA_VISIBLE_DEVICES={visible!r} hides {machine} from this process, so it runs on the "
                     "CPU. Unset it, or list the GPU ids to use (CUDA_VISIBLE_DEVICES=0,1).")  # fmt: skip
    return found


def environment_report() -> dict[str, object]:
    """Versions, accelerators, distributed setup, CPU threads, memory, the seed a run would use, and warnings."""
    cuda = torch.cuda.is_available()
    gpu_count = torch.cuda.device_count() if cuda else 0
    devices = [torch.cuda.get_device_name(i) for i in range(gpu_count)]
    peers = peer_access(gpu_count)
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
        "distributed_backends": distributed_backends(),
        "nccl_version": nccl_version(),
        "gpu_count": gpu_count,
        "gpu_peer_access": peers,
        "gpu_topology": gpu_topology() if gpu_count > 1 else [],
        "launch_env": launch_env(os.environ),
        "warnings": launch_warnings(os.environ, gpu_count, peers, physical_gpus()),
    }


def env(as_json: bool = False) -> dict[str, object]:
    """Print an environment report: Python, torch, CUDA/cuDNN, devices, library versions, threads, memory, seed,
    distributed backends, NCCL, GPU peer access, launch variables and launch warnings.

    Args:
        as_json: print JSON instead of a table.
    """
    report = environment_report()
    if as_json:
        print(json.dumps(report, indent=2))
        return report
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="llm-course environment", show_header=False)
    for key, value in report.items():
        if key in ("warnings", "gpu_topology"):
            continue
        if key in ("distributed_backends", "gpu_peer_access"):
            text = ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in value.items())
            table.add_row(key, text or "- (fewer than 2 GPUs)")
        elif isinstance(value, dict):
            for name, version in value.items():
                table.add_row(name, "unset" if version is None else str(version))
        else:
            table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console = Console()
    console.print(table)
    for line in report["gpu_topology"]:
        console.print(line, markup=False, highlight=False)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    return report
