"""Pieces every task module shares, as plain functions: checkpoints, ``torch.compile``, optimizers."""

from collections.abc import Callable
from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def checkpoint_callbacks(monitor: str, mode: str = "min") -> list[ModelCheckpoint]:
    """``best.ckpt`` (by ``monitor``) and ``last.ckpt`` (every epoch) in ``<run dir>/checkpoints``.

    Two callbacks, because Lightning's ``save_last=True`` only refreshes ``last.ckpt`` when a new best is
    saved, and resuming needs the latest state. Lightning writes each file to a temporary name and moves
    it into place, so a crash during a save never leaves a truncated ``last.ckpt``.
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


def configure_optimizers(
    module: LightningModule,
    optimizer: Callable[..., Optimizer],
    scheduler: Callable[..., LRScheduler] | None = None,
) -> Optimizer | dict[str, Any]:
    """Build the optimizer over trainable parameters only, and the scheduler if one is configured.

    ``OneCycleLR`` steps every batch and gets its ``total_steps`` from the Trainer when the config leaves
    it out; other schedulers step every epoch.
    """
    opt = optimizer([p for p in module.parameters() if p.requires_grad])
    if scheduler is None:
        return opt
    trainer = module.trainer
    try:
        sched = scheduler(opt)
        interval = "step" if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) else "epoch"
    except ValueError as err:  # OneCycleLR without total_steps: the Trainer knows the run's length
        if "total_steps" not in str(err):
            raise
        sched, interval = scheduler(opt, total_steps=int(trainer.estimated_stepping_batches)), "step"
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}
