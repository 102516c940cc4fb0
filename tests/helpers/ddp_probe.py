"""Callbacks that the DDP tests add to a real run (``--trainer.callbacks+=...``), importable by every rank."""

import hashlib
import math
import os
from pathlib import Path

import lightning as L
import torch


class WeightsDigest(L.Callback):
    """After ``fit`` (and the task's own ``on_fit_end``), each rank writes a digest of its weights to ``folder``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.sha256").write_text(digest.hexdigest())


class NaNOnRank(L.Callback):
    """Turns the loss of one rank into NaN at one global step, as a diverging shard would."""

    def __init__(self, rank: int = 1, step: int = 3) -> None:
        self.rank, self.step = rank, step

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            loss.data.fill_(math.nan)


class TouchPerRank(L.Callback):
    """Writes ``<folder>/pid-<rank>`` so a test can count the processes that ran."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}-of-{trainer.world_size}").write_text(str(os.getpid()))
