"""LightningModule for Module 2: one image classifier around any ``nn.Module`` (MLP or CNN)."""

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from llm_course.training import TaskModule, maybe_compile
from llm_course.vision.models import SmallCNN


class ImageClassifier(TaskModule):
    """Cross-entropy classification of images with accuracy, macro F1 and a test confusion matrix.

    Args:
        net: the network, chosen in YAML (``llm_course.vision.MLP`` or ``llm_course.vision.SmallCNN``).
        num_classes: number of classes; the CLI links it to ``data.num_classes``.
        optimizer: optimizer factory (SGD, Adam, AdamW, ...).
        scheduler: LR scheduler factory (StepLR, CosineAnnealingLR, OneCycleLR, ...); OneCycleLR's
            ``total_steps`` is filled from the Trainer when left out.
        label_smoothing: cross-entropy label smoothing.
        compile: apply ``torch.compile`` to ``net``.
    """

    checkpoint_monitor = ("val/acc", "max")

    def __init__(
        self,
        net: nn.Module | None = None,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net if net is not None else SmallCNN(num_classes=num_classes)
        self.optimizer, self.scheduler = optimizer, scheduler
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        })  # fmt: skip
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    def configure_model(self) -> None:
        maybe_compile(self.net, self.hparams.compile)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def shared_step(self, batch: list[torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits, y)
        self.log_loss(stage, loss, len(y))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        if stage == "test":
            self.test_confusion.update(logits, y)
        return loss

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        self.confusion_matrix = self.test_confusion.compute().cpu()

    def predict_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(-1)
