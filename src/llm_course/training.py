"""Pieces every task module shares: the step trio, optimizers and schedules from YAML, checkpoints, compile."""

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR
from torchmetrics import MeanMetric

from llm_course.errors import ConfigError


def checkpoint_callbacks(monitor: str, mode: str = "min") -> list[ModelCheckpoint]:
    """``best.ckpt`` (by ``monitor``) and ``last.ckpt`` (every epoch) in ``<run dir>/checkpoints``.

    Two callbacks, because Lightning's ``save_last=True`` only refreshes ``last.ckpt`` when a new best is
    saved, and resuming needs the latest state. Lightning writes each file to a temporary name and moves
    it into place, so a crash during a save never leaves a truncated ``last.ckpt``. The CLI adds them unless
    the user turned checkpointing off or configured a ModelCheckpoint of their own.
    """
    best = ModelCheckpoint(monitor=monitor, mode=mode, filename="best", auto_insert_metric_name=False)
    last = ModelCheckpoint(filename="last", save_top_k=1, enable_version_counter=False)
    return [best, last]


def maybe_compile(net: nn.Module, enabled: bool) -> None:
    """Compile ``net`` in place with ``torch.compile``.

    ``nn.Module.compile`` keeps parameter names unchanged (``torch.compile(net)`` would prefix them with
    ``_orig_mod.``), so checkpoints stay interchangeable between compiled and eager runs.
    """
    if enabled:
        net.compile()


def planned_steps(batches_per_epoch: int, accumulate: int, epochs: int, max_steps: int = -1) -> int:
    """The optimizer steps a run will take: ``epochs`` × ⌈``batches_per_epoch`` / ``accumulate``⌉ (an epoch's last,
    shorter group of micro-batches steps too), capped by ``max_steps`` (-1: no cap), as Lightning's
    ``trainer.estimated_stepping_batches``. A schedule sized by ``max_steps`` alone would be cut off mid-decay when
    the data runs out first."""
    total = epochs * math.ceil(batches_per_epoch / accumulate)
    return min(total, max_steps) if max_steps > 0 else total


class WarmupDecayLR(LambdaLR):
    """Linear warm-up from 0 over ``ceil(warmup_ratio * total_steps)`` steps, then ``decay`` to 0 (or constant).

    The schedule of BERT-style fine-tuning (``transformers.get_scheduler``'s linear, cosine and
    constant-with-warmup), as a scheduler class that YAML can name. It steps every optimizer step; the
    course's :func:`configure_optimizers` fills ``total_steps`` from the Trainer when the config leaves it out.

    Args:
        optimizer: the optimizer whose learning rates it scales.
        total_steps: optimizer steps of the whole run.
        warmup_ratio: share of ``total_steps`` spent warming up.
        decay: ``linear`` or ``cosine`` to 0 at ``total_steps``, or ``constant`` after the warm-up.
    """

    interval = "step"

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        warmup_ratio: float = 0.0,
        decay: Literal["linear", "cosine", "constant"] = "linear",
    ) -> None:
        if total_steps is None:
            raise ValueError("WarmupDecayLR needs total_steps (the course fills it from the Trainer)")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ConfigError(f"scheduler warmup_ratio={warmup_ratio}: must be in [0, 1)")
        if decay not in ("linear", "cosine", "constant"):
            raise ConfigError(f"scheduler decay={decay!r} is not one of: linear, cosine, constant")
        self.total_steps, self.warmup_steps, self.decay = total_steps, math.ceil(warmup_ratio * total_steps), decay
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.decay == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def configure_optimizers(
    module: L.LightningModule,
    optimizer: Callable[..., Optimizer],
    scheduler: Callable[..., LRScheduler] | None = None,
) -> Optimizer | dict[str, Any]:
    """Build the optimizer over trainable parameters only, and the scheduler if one is configured.

    A scheduler that needs the run's length (``OneCycleLR``, :class:`WarmupDecayLR`) gets ``total_steps`` from
    the Trainer when the config leaves it out, and steps every optimizer step; other schedulers step every epoch.
    """
    opt = optimizer([p for p in module.parameters() if p.requires_grad])
    if scheduler is None:
        return opt
    try:
        sched = scheduler(opt)
    except ValueError as err:  # no total_steps in the config: the Trainer knows the run's length
        if "total_steps" not in str(err):
            raise
        sched = scheduler(opt, total_steps=int(module.trainer.estimated_stepping_batches))
    interval = "step" if isinstance(sched, OneCycleLR) or getattr(sched, "interval", "") == "step" else "epoch"
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}


def all_gather_objects(items: list[Any]) -> list[Any]:
    """Every rank's ``items`` concatenated (rank 0's first), on every rank; ``items`` itself in one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return list(items)
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, list(items))
    return [x for part in gathered for x in part]


class TaskModule(L.LightningModule):
    """What every course LightningModule shares: ``training/validation/test_step`` call ``shared_step(batch,
    stage)``, the optimizer and schedule come from YAML, and ``checkpoint_monitor`` names the metric that picks
    ``best.ckpt``.

    Subclasses set ``self.optimizer`` / ``self.scheduler`` (``OptimizerCallable`` / ``LRSchedulerCallable``
    arguments) and implement :meth:`shared_step`.
    """

    checkpoint_monitor: tuple[str, str] = ("val/loss", "min")
    optimizer: Callable[..., Optimizer]
    scheduler: Callable[..., LRScheduler] | None = None

    def __init__(self) -> None:
        super().__init__()
        # Sample-weighted means that torchmetrics sums over DDP ranks: exact, unlike a mean of per-rank means.
        self.eval_loss = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def log_loss(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        """Log ``{stage}/loss``: per step and per epoch in training; the exact mean over all samples in evaluation."""
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
            return
        self.eval_loss[stage].update(loss.detach().float(), weight=batch_size)
        self.log(f"{stage}/loss", self.eval_loss[stage], prog_bar=True, on_step=False, on_epoch=True)

    def shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        return configure_optimizers(self, self.optimizer, self.scheduler)

    def write_predictions(self, inputs: list[dict[str, Any]]) -> None:
        """Write ``<run>/predictions.jsonl`` once, on rank 0: one line per input (``inputs[i]`` merged with the
        prediction of index ``i``), in input order, and print it. Call from ``on_predict_epoch_end``.

        ``predict_step`` returns dicts with an ``index``. Under DDP each rank predicted its share of the inputs; the
        shares are gathered and put back in order by that index.
        """
        run_dir = self.trainer.log_dir  # collective under DDP: every rank reads it
        preds = [p for batch in self.trainer.predict_loop.predictions for p in batch]
        preds = sorted(all_gather_objects(preds), key=lambda p: p["index"])
        if not self.trainer.is_global_zero:
            return
        assert [p["index"] for p in preds] == list(range(len(inputs))), "an input was predicted twice or not at all"
        lines = [json.dumps({**inputs[p.pop("index")], **p}) for p in preds]
        if run_dir:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            (Path(run_dir) / "predictions.jsonl").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
