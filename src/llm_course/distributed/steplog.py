"""What a multi-process training run measured, the same way for a Lightning run and for the Accelerate loop.

A run record (a JSON file) holds the loss of every optimizer step averaged over all processes (the loss of the
global batch, which 1- and N-process runs at equal global batch share), the training time of every step (forward,
backward, gradient sync and optimizer step; not data loading, validation or set-up), the samples trained, the peak
memory of each process and the last validation metrics. :class:`StepLog` records one for a Lightning run; the Accelerate
loop writes its own with :func:`run_record`.
"""

import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from llm_course.memory import peak_mb, reset_peak


def run_record(
    framework: str,
    world_size: int,
    device: torch.device,
    losses: list[float],
    step_seconds: list[float],
    samples: int,
    train_seconds: float,
    peak_mem_mb: list[float],
    val: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One run's numbers, as the benchmark reads them.

    Args:
        framework: ``lightning`` or ``accelerate``.
        world_size: processes in the run.
        device: the device of this process (``cpu`` or ``cuda:N``).
        losses: loss of each optimizer step, averaged over processes.
        step_seconds: training time of each optimizer step (rank 0's; the all-reduce keeps the ranks in step).
        samples: samples trained, all processes together.
        train_seconds: training time of the slowest process.
        peak_mem_mb: peak memory of each process during training (resident set on a CPU, CUDA allocator on a GPU).
        val: the last validation metrics (``val/acc``, ``val/f1``, ``val/loss``), if any.
    """
    median = statistics.median(step_seconds) if step_seconds else float("nan")
    return {
        "framework": framework,
        "world_size": world_size,
        "device": device.type,
        "threads_per_process": torch.get_num_threads(),
        "steps": len(losses),
        "losses": [round(x, 6) for x in losses],
        "samples": samples,
        "train_seconds": round(train_seconds, 3),
        "samples_per_sec": round(samples / max(train_seconds, 1e-9), 3),
        # the median step: robust to the first step's warm-up and to bursts of load from other programs
        "samples_per_sec_median_step": round(samples / max(len(losses), 1) / median, 3),
        "step_seconds": [round(x, 4) for x in step_seconds],
        "peak_mem_mb": [round(x, 1) for x in peak_mem_mb],
        "memory": "cuda_allocated" if device.type == "cuda" else "rss",
        "val": val or {},
    }


def write_record(path: str | Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


class StepLog(L.Callback):
    """Writes a run record (see the module docstring) for a Lightning fit to ``path``, from rank 0.

    Each training batch is timed from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, the
    gradient all-reduce and the optimizer step), as ``llm-course bench imdb`` does. The per-step loss is reduced
    over ranks: the module logs rank 0's own loss only, which under DDP is the loss of half the global batch.
    Every hook that communicates runs on every rank.

    Args:
        path: where the JSON record goes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.losses: list[float] = []
        self.step_seconds: list[float] = []
        self.seconds = 0.0
        self._step_time = 0.0
        self.samples = 0
        self.val: dict[str, float] = {}
        self._micro: list[torch.Tensor] = []
        self._start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reset_peak(pl_module.device)  # the peak of training, not of loading the model
        self._last_step = trainer.global_step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._start
        self.seconds += elapsed
        self._step_time += elapsed
        self.samples += len(batch["labels"])
        self._micro.append(outputs["loss"].detach().float())
        if trainer.global_step > self._last_step:  # an optimizer step happened (after accumulation)
            local = torch.stack(self._micro).sum()  # Lightning hands over each loss divided by the accumulation
            self.losses.append(float(trainer.strategy.reduce(local, reduce_op="mean")))
            self.step_seconds.append(self._step_time)
            self._micro, self._last_step, self._step_time = [], trainer.global_step, 0.0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        strategy, device = trainer.strategy, pl_module.device
        peaks = strategy.all_gather(torch.tensor([peak_mb(device)], device=device)).reshape(-1).tolist()
        seconds = float(strategy.reduce(torch.tensor(self.seconds, device=device), reduce_op="max"))
        samples = int(strategy.reduce(torch.tensor(float(self.samples), device=device), reduce_op="sum"))
        if trainer.is_global_zero:
            record = run_record("lightning", trainer.world_size, device, self.losses, self.step_seconds, samples,
                                seconds, peaks, self.val)  # fmt: skip
            write_record(self.path, record)
