"""LightningModule for Module 3: fine-tune ``AutoModelForSequenceClassification`` with torchmetrics."""

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from llm_course.assets import from_pretrained, resolve_model
from llm_course.errors import ConfigError
from llm_course.training import TaskModule, maybe_compile


def dropout_keys(config) -> list[str]:
    """Names of the dropout probabilities in a HF config (``hidden_dropout_prob``, ``attention_dropout``, ...)."""
    return [k for k, v in config.to_dict().items() if "dropout" in k and type(v) in (float, int)]


def compute_metrics(metrics: MetricCollection) -> dict[str, torch.Tensor]:
    """Compute and reset a :class:`TextClassifier` metric collection; with two labels, ``*/f1`` is the F1 of the
    positive class (the usual IMDb number), macro F1 otherwise. The training loops of Modules 4 and 5 use it too."""
    values = metrics.compute()
    metrics.reset()
    return {k: v[1] if k.endswith("/f1") and v.ndim else v for k, v in values.items()}


class TextClassifier(TaskModule):
    """A Hugging Face sequence classifier fine-tuned end to end (AdamW and a warm-up schedule in the configs).

    The network is built in ``configure_model``, once the DataModule has read the data and knows the
    label names, which go into the HF config as ``id2label``. After ``fit`` the best checkpoint's weights
    and the tokenizer are saved with ``save_pretrained`` to ``<run>/hf_model/``, loadable by plain
    ``transformers``.

    Args:
        model_name_or_path: a hub id (``distilbert-base-uncased``), a local folder, or ``minilm`` (embedded).
        labels: class names, in label-id order; default: the DataModule's ``label_names``.
        optimizer: optimizer factory (AdamW by default).
        scheduler: learning-rate schedule, e.g. ``llm_course.training.WarmupDecayLR`` (linear warm-up, then
            linear or cosine decay), stepped every optimizer step; none: a constant rate.
        dropout: set every dropout probability of the pretrained config (BERT's ``hidden_dropout_prob`` and
            ``attention_probs_dropout_prob``, DistilBERT's ``dropout``, ...) to this value; ``None`` keeps the
            pretrained values. On a CPU, attention dropout rules out PyTorch's fused attention kernel:
            ``0.0`` trains MiniLM 1.5x faster (notes/03).
        freeze_embeddings: keep the input token embeddings as pretrained (``get_input_embeddings()``: MiniLM's
            30,522 x 384 table, half its weights). Each step then skips their dense gradient and their AdamW
            update; position embeddings, encoder and head still train (notes/04 measures speed and F1).
        compile: apply ``torch.compile`` to the network.
        trust_remote_code: allow models whose code lives on the hub (off unless you trust the repo). Taken from
            the caller only: not saved with the hyperparameters, and ``load_from_checkpoint`` ignores a value a
            checkpoint carries.
    """

    checkpoint_monitor = ("val/f1", "max")

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        labels: list[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        dropout: float | None = None,
        freeze_embeddings: bool = False,
        compile: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        # Checked before any data is read: a bad value or an unavailable model fails in seconds, not after
        # tokenizing the data set. resolve_model is cheap (offline it looks in the local cache; online it
        # returns the hub id) and names the flag the user set, not the DataModule's linked copy.
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.init_args.dropout={dropout}: must be in [0, 1); null keeps the model's own")
        resolve_model(model_name_or_path, "--model.init_args.model_name_or_path")
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "trust_remote_code"])  # never from a file
        self.trust_remote_code = trust_remote_code
        self.optimizer, self.scheduler = optimizer, scheduler
        self.net = None
        if labels:
            self._build(labels)

    def _build(self, label_names: list[str]) -> None:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        hp, flag = self.hparams, "--model.init_args.model_name_or_path"
        n = len(label_names)
        hp.labels = list(label_names)  # saved in checkpoints, so load_from_checkpoint rebuilds it
        config = from_pretrained(
            AutoConfig, hp.model_name_or_path, flag, trust_remote_code=self.trust_remote_code,
            num_labels=n, id2label=dict(enumerate(label_names)), label2id={v: i for i, v in enumerate(label_names)},
        )  # fmt: skip
        if hp.dropout is not None:
            config.update(dict.fromkeys(dropout_keys(config), hp.dropout))
        self.net = from_pretrained(AutoModelForSequenceClassification, hp.model_name_or_path, flag, config=config,
                                   trust_remote_code=self.trust_remote_code)  # fmt: skip
        if hp.freeze_embeddings:  # before configure_optimizers, which takes only parameters that require grad
            self.net.get_input_embeddings().requires_grad_(False)
        self.net.train()  # from_pretrained returns eval mode, and Lightning keeps each submodule's mode
        task = {"num_classes": n}
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(average="micro", **task),
            # binary F1 of the positive class for two labels (the usual IMDb number), macro F1 otherwise
            "f1": MulticlassF1Score(average=None, **task) if n == 2 else MulticlassF1Score(average="macro", **task),
        })  # fmt: skip
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_confusion = MulticlassConfusionMatrix(**task)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, trust_remote_code: bool = False, **kwargs: Any):
        """Lightning's ``load_from_checkpoint``, with ``trust_remote_code`` from the caller only (default off)."""
        return super().load_from_checkpoint(checkpoint_path, *args, trust_remote_code=trust_remote_code, **kwargs)

    def configure_model(self) -> None:
        if self.net is None:
            names = getattr(self.trainer.datamodule, "label_names", None) if self._trainer else None
            if not names:
                raise ValueError("model.labels is empty and the DataModule provides no label_names")
            self._build(names)
        maybe_compile(self.net, self.hparams.compile)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=input_ids, attention_mask=attention_mask).logits

    def shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits, batch["labels"])
        if stage == "test":
            self.test_confusion.update(logits, batch["labels"])
        self.log_loss(stage, loss, len(batch["labels"]))
        return loss

    def _log_metrics(self, stage: str) -> None:
        self.log_dict(compute_metrics(getattr(self, f"{stage}_metrics")), prog_bar=stage == "val", sync_dist=False)

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self.confusion_matrix = self.test_confusion.compute().cpu()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict]:
        probs = self(batch["input_ids"], batch["attention_mask"]).float().softmax(-1)
        names = self.hparams.labels
        return [{"index": int(i), "label": names[int(p.argmax())], "score": round(float(p.max()), 4)}
                for i, p in zip(batch["index"], probs, strict=True)]  # fmt: skip

    def on_predict_epoch_end(self) -> None:
        self.write_predictions([{"text": t} for t in self.trainer.datamodule.predict_texts])

    def on_fit_end(self) -> None:
        """Every rank loads the best weights (by ``val/f1``); rank 0 saves them with the tokenizer as a plain HF
        folder, ``<run>/hf_model/``, while the others wait."""
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # collective under DDP
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        if best and Path(best).is_file():
            self.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
        if self.trainer.is_global_zero:
            self.net.save_pretrained(run_dir / "hf_model")
            tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(run_dir / "hf_model")
        self.trainer.strategy.barrier("save_hf")
