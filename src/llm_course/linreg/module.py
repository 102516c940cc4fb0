"""LightningModule for Module 1: mean-squared-error regression with torchmetrics."""

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.nn import functional as F
from torchmetrics import MeanAbsoluteError, MetricCollection, R2Score

from llm_course.linreg.model import LinearRegression
from llm_course.training import TaskModule, maybe_compile


class RegressionTask(TaskModule):
    """Fits :class:`LinearRegression` by minimizing the mean squared error.

    Args:
        in_features: input width; the CLI links it to ``data.num_features``.
        optimizer: optimizer factory, chosen in YAML (``class_path: torch.optim.SGD`` ...).
        scheduler: optional LR scheduler factory.
        compile: apply ``torch.compile`` to the network.
    """

    def __init__(
        self,
        in_features: int = 8,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer, self.scheduler = optimizer, scheduler
        self.net = LinearRegression(in_features)
        metrics = MetricCollection({"mae": MeanAbsoluteError(), "r2": R2Score()})
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def configure_model(self) -> None:
        maybe_compile(self.net, self.hparams.compile)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        pred = self(x)
        loss = F.mse_loss(pred.float(), y)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(pred.float(), y)
        self.log_loss(stage, loss, len(y))
        self.log_dict(metrics, on_step=False, on_epoch=True)
        return loss

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0])
