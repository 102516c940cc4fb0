"""Pieces every task module shares, as plain functions: checkpoint policy and ``torch.compile``."""

from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn


def checkpoint_callback(monitor: str, mode: str = "min") -> ModelCheckpoint:
    """Keep ``best.ckpt`` (by ``monitor``) and ``last.ckpt`` in ``<run dir>/checkpoints``.

    Lightning writes each checkpoint to a temporary file and moves it into place, so a crash during
    a save never leaves a truncated ``last.ckpt``.
    """
    return ModelCheckpoint(
        monitor=monitor, mode=mode, filename="best", save_last=True, auto_insert_metric_name=False
    )


def maybe_compile(net: nn.Module, enabled: bool) -> None:
    """Compile ``net`` in place with ``torch.compile``.

    ``nn.Module.compile`` keeps parameter names unchanged (``torch.compile(net)`` would prefix them with
    ``_orig_mod.``), so checkpoints stay interchangeable between compiled and eager runs.
    """
    if enabled:
        net.compile()
