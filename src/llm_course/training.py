"""Pieces every task module shares, as plain functions: checkpoint policy and ``torch.compile``."""

from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn


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
