"""Callbacks that every course task gets from the CLI: NaN guard, grad-norm, throughput, RNG state, test report."""

import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.data import extract_batch_size

from llm_course.errors import NonFiniteError
from llm_course.memory import peak_mb

LIKELY_CAUSES = (
    "a learning rate too high for this model (lower --model.optimizer.init_args.lr)",
    "fp16 overflow (use --trainer.precision=bf16-mixed or 32-true)",
    "exploding gradients (set --trainer.gradient_clip_val=1.0)",
    "NaN or Inf in the input data, or a log/division of zero in the loss",
)


class NaNGuard(L.Callback):
    """Stops training at the first non-finite loss or gradient norm, before the optimizer touches the weights.

    Both checks run before ``optimizer.step``, so the weights in memory and every checkpoint already
    written stay finite: ``last.ckpt`` is the last good state and a fixed run can resume from it.
    The gradient norm (total L2 over all parameters) is logged as ``train/grad_norm``.

    Args:
        check_grad_norm: also check (and log) the gradient norm. Under ``16-mixed`` precision an
            infinite norm is the grad scaler's normal signal to skip a step, so it is only logged there.
    """

    def __init__(self, check_grad_norm: bool = True) -> None:
        self.check_grad_norm = check_grad_norm

    @staticmethod
    def _stop(trainer: L.Trainer, what: str, value: float, rank: int | None = None) -> None:
        causes = "\n".join(f"  - {c}" for c in LIKELY_CAUSES)
        where = f" on rank {rank} of {trainer.world_size}" if trainer.world_size > 1 and rank is not None else ""
        raise NonFiniteError(
            f"{what} is {value} at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1}){where}. "
            f"Training stopped before the optimizer step, so the weights and the checkpoints already "
            f"written are finite. Likely causes:\n{causes}"
        )

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        # Decided on all ranks together: a rank that stopped alone would leave the others waiting in the
        # gradient all-reduce. Every rank sees every rank's loss and stops at the same step with the same message.
        values = loss.detach().float().reshape(-1)[:1]
        if trainer.world_size > 1:
            values = trainer.strategy.all_gather(values).reshape(-1)
        bad = [rank for rank, value in enumerate(values.tolist()) if not math.isfinite(value)]
        if bad:
            self._stop(trainer, "The training loss", float(values[bad[0]]), bad[0])

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.check_grad_norm:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:  # no parameter has a gradient yet
            return
        # one total L2 norm on the device and one host sync (a norm per parameter, each read back, costs a GPU
        # step's worth of time on a small model)
        norm = torch.linalg.vector_norm(torch.stack([g.detach().float().norm() for g in grads]))
        pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        # DDP has already averaged the gradients, so every rank sees the same norm and takes the same decision.
        if not str(trainer.precision).startswith("16") and not bool(torch.isfinite(norm)):
            self._stop(trainer, "The gradient norm", float(norm))


class ThroughputMemory(L.Callback):
    """Logs ``train/samples_per_sec`` (per device, averaged over ``log_every_n_steps``) and ``train/peak_mem_mb``.

    Lightning's ``ThroughputMonitor`` needs a per-task ``batch_size_fn`` and reports FLOPs; this one infers
    the batch size the way Lightning's logger does and adds the peak memory, which is what the course compares.
    """

    def __init__(self) -> None:
        self._t0: float | None = None
        self._samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._samples = time.perf_counter(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._samples += extract_batch_size(batch)
        if (batch_idx + 1) % trainer.log_every_n_steps or self._t0 is None:
            return
        elapsed = time.perf_counter() - self._t0
        pl_module.log("train/samples_per_sec", self._samples / max(elapsed, 1e-9), on_step=True, on_epoch=False)
        pl_module.log("train/peak_mem_mb", peak_mb(pl_module.device), on_step=True, on_epoch=False)
        self._t0, self._samples = time.perf_counter(), 0


class RNGState(L.Callback):
    """Saves the Python, NumPy and torch RNG states in each checkpoint and restores them on resume.

    Lightning restores weights, optimizer and loop counters but not the global RNGs, so without this
    a resumed run would shuffle (and drop out) differently from an uninterrupted one. The states are
    put back at the start of the first resumed epoch, the point where the uninterrupted run would
    continue from. Each process saves and restores its own rank's state in single-device runs; under
    DDP the distributed sampler is seeded per epoch and the state of rank 0 is saved.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Plain tensors, ints and tuples only, so the checkpoint still loads with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class ProgressLog(ProgressBar):
    """Progress for logs, CI and benchmarks: one line on stderr at least every ``interval`` seconds.

    Each line gives the stage, the epoch, the batch out of the epoch's total, the global step out of the run's,
    samples/s, the time elapsed and left in the stage's epoch, and the current loss; a line also closes every
    epoch. A terminal gets Rich's bar instead (the CLI chooses).

    Args:
        interval: seconds between lines within an epoch (0: every batch).
    """

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        self.interval = interval
        self._enabled = True
        self._start: dict[str, float] = {}
        self._samples: dict[str, int] = {}
        self._last = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _begin(self, stage: str) -> None:
        self._start[stage] = self._last = time.perf_counter()
        self._samples[stage] = 0
        self.reset_dataloader_idx_tracker()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin("train")
        # batches this epoch will run: all of them, or as many as the steps left allow (k batches per step)
        self._train_total: float = trainer.num_training_batches
        if trainer.max_steps > 0:
            left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
            self._train_total = min(self._train_total, left)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin("validate")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin("test")

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin("predict")

    def _line(self, trainer: L.Trainer, stage: str, done: int, total: float | int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self._enabled or not trainer.is_global_zero or (not final and now - self._last < self.interval):
            return
        self._last, elapsed = now, now - self._start.get(stage, now)
        parts = [f"{stage} epoch {trainer.current_epoch}"]
        known = isinstance(total, int) or (isinstance(total, float) and math.isfinite(total))
        parts.append(f"batch {done}/{int(total)}" if known else f"batch {done}")
        if stage == "train":
            max_steps = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
            parts.append(f"step {trainer.global_step}/{int(max_steps) if math.isfinite(max_steps) else '?'}")
        parts.append(f"{self._samples.get(stage, 0) / max(elapsed, 1e-9):.1f} samples/s")
        eta = elapsed / done * (total - done) if known and done else float("nan")
        parts.append(f"elapsed {_clock(elapsed)}" + (f" ETA {_clock(eta)}" if math.isfinite(eta) else ""))
        loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
        if stage == "train" and loss is not None:
            parts.append(f"loss {float(loss):.4g}")
        print("  ".join(parts), file=sys.stderr, flush=True)

    def _batch(self, trainer: L.Trainer, batch: Any, stage: str, done: int, total: float | int) -> None:
        try:
            size = extract_batch_size(batch)
        except Exception:  # a batch layout Lightning cannot size: count batches instead
            size = 1
        self._samples[stage] = self._samples.get(stage, 0) + size
        self._line(trainer, stage, done, total)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self._batch(trainer, batch, "train", batch_idx + 1, self._train_total)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self.has_dataloader_changed(dataloader_idx)  # tells the base class which loader's total to give
        if not trainer.sanity_checking:
            self._batch(trainer, batch, "validate", batch_idx + 1, self.total_val_batches_current_dataloader)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self.has_dataloader_changed(dataloader_idx)
        self._batch(trainer, batch, "test", batch_idx + 1, self.total_test_batches_current_dataloader)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self.has_dataloader_changed(dataloader_idx)
        self._batch(trainer, batch, "predict", batch_idx + 1, self.total_predict_batches_current_dataloader)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))
        elapsed = _clock(time.perf_counter() - self._start.get("train", time.perf_counter()))
        print(f"epoch {trainer.current_epoch} done in {elapsed}  step {trainer.global_step}  {shown}",
              file=sys.stderr, flush=True)  # fmt: skip


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m{secs:02d}s" if minutes >= 60 else f"{minutes}m{secs:02d}s"


class History(L.Callback):
    """Keeps the logged scalars after every validation in ``self.epochs``, for benchmark curves.

    It reads them in ``on_validation_end``: callbacks' ``on_validation_epoch_end`` runs before the module's,
    so values a module logs there (Module 3's F1) would be missing.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        scalars = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        self.epochs.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **scalars})


class ExportBestWeights(L.Callback):
    """After ``fit``, saves the best checkpoint's network weights alone as ``checkpoints/best.safetensors``.

    The file holds the state dict of ``pl_module.net`` (the plain ``nn.Module``) when the task has one,
    so ``net.load_state_dict(safetensors.torch.load_file(path))`` works without Lightning; otherwise the
    whole module's.
    """

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from safetensors.torch import save_file

        ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if not ckpt or not Path(ckpt).is_file() or hasattr(pl_module, "save_hf"):  # it writes its own HF folders
            return
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        prefix = "net." if hasattr(pl_module, "net") else ""
        weights = {k[len(prefix) :]: v.contiguous().clone() for k, v in state.items() if k.startswith(prefix)}
        save_file(weights, Path(ckpt).with_suffix(".safetensors"), metadata={"source": Path(ckpt).name})


class TestReport(L.Callback):
    """After ``test``, writes ``metrics.json`` (every ``test/*`` value) into the run directory.

    When the module keeps a ``confusion_matrix`` (a ``(C, C)`` tensor computed in ``on_test_epoch_end``), it
    also writes ``confusion_matrix.png`` (and logs it to TensorBoard) and ``classification_report.txt``, with
    class names from the DataModule's ``class_names`` when it has them.
    """

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir is collective: every rank reads it
        if not trainer.is_global_zero:
            return
        from llm_course.plotting import plot_confusion_matrix
        from llm_course.reports import classification_report

        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = {
            k: v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v
            for k, v in trainer.callback_metrics.items()
            if k.startswith("test/")
        }
        cm = getattr(pl_module, "confusion_matrix", None)
        if cm is not None:
            dm = trainer.datamodule
            names = (
                getattr(dm, "class_names", None) or getattr(dm, "label_names", None) or [str(i) for i in range(len(cm))]
            )
            metrics["test/confusion_matrix"] = cm.tolist()
            (run_dir / "classification_report.txt").write_text(classification_report(cm, names))
            fig = plot_confusion_matrix(cm, names, title=f"Test confusion matrix ({int(cm.sum())} samples)")
            fig.savefig(run_dir / "confusion_matrix.png", dpi=120)
            for logger in trainer.loggers:
                if hasattr(logger.experiment, "add_figure"):
                    logger.experiment.add_figure("test/confusion_matrix", fig, trainer.global_step, close=False)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
