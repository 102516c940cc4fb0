"""One row of ``llm-course bench precision``, measured inside its own process the same way for both loops.

A Lightning row is ``python -m llm_course fit ...`` with :class:`RunRecord` among its callbacks; a plain-loop row is
``python -m llm_course.optimization.probes SPEC RECORD``, which calls :func:`~llm_course.optimization.plain_loop.
fit_plain`. Both write the same record (a JSON file): the end time of every optimizer step since training started,
the loss of every step, the samples trained, the peak memory above the idle baseline (the process with its data
loaded and no network yet) and the validation metrics after training; or, where the NaN guard stopped the run,
``non_finite`` with the step and the message, which is a result of the row, not a crash.
"""

import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from llm_course.errors import NonFiniteError
from llm_course.memory import current_mb, peak_mb, reset_peak


def write_record(path: str | Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def failure(err: BaseException, step: int | None) -> dict[str, Any]:
    """The record fields of a run that ended in ``err`` at optimizer step ``step``."""
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, NonFiniteError):
        return {"status": "non_finite", "non_finite": True, "stopped_at_step": step, "reason": message}
    reason = f"{type(err).__name__}: {message}"
    return {"status": "error", "non_finite": False, "stopped_at_step": step, "reason": reason}


class RunRecord(L.Callback):
    """Writes a Lightning fit's record (see the module docstring) to ``path``.

    Timing: the end of each optimizer step (``on_train_batch_end`` once ``global_step`` moved, after a CUDA
    synchronize) since ``on_train_start``. The intervals therefore hold everything the Trainer does between two
    steps (fetching the batch, hooks, callbacks, logging), which is what the plain loop is compared on; validation
    runs after the last step and is excluded. Memory: the baseline is read in ``setup`` (the DataModule has set up,
    ``configure_model`` has not built the network yet), the peak is reset at ``on_train_start`` and read before
    the first validation.

    Args:
        path: where the JSON record goes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.record: dict[str, Any] = {"loop": "lightning", "status": "ok", "non_finite": False,
                                       "stopped_at_step": None, "reason": None}  # fmt: skip
        self.step_end_seconds: list[float] = []
        self.losses: list[float] = []
        self.samples = 0
        self._micro: list[float] = []
        self._baseline = 0.0
        self._peak: float | None = None
        self._start = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._device = trainer.strategy.root_device
        self._baseline = current_mb(self._device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reset_peak(self._device)
        self._last_step = trainer.global_step
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        self.samples += len(batch["labels"])
        # Lightning hands over each micro-batch's loss divided by accumulate_grad_batches; the sum is the step's mean.
        self._micro.append(float(outputs["loss"]))
        if trainer.global_step > self._last_step:
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
            self.step_end_seconds.append(time.perf_counter() - self._start)
            self.losses.append(sum(self._micro))
            self._micro, self._last_step = [], trainer.global_step

    def _read_peak(self) -> None:
        if self._peak is None:
            self._peak = peak_mb(self._device) - self._baseline

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._read_peak()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.record["val"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.record.update(failure(exception, trainer.global_step + 1))
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        self._read_peak()
        precision = str(trainer.precision)
        seconds = self.step_end_seconds[-1] if self.step_end_seconds else 0.0
        self.record.update({
            "precision": precision,
            "compile": bool(getattr(trainer.lightning_module, "hparams", {}).get("compile", False)),
            "device": self._device.type,
            "threads": torch.get_num_threads(),
            "steps": len(self.step_end_seconds),
            "samples": self.samples,
            "train_seconds": round(seconds, 3),
            "samples_per_sec": round(self.samples / max(seconds, 1e-9), 3),
            "step_end_seconds": [round(t, 4) for t in self.step_end_seconds],
            "losses": [round(x, 6) for x in self.losses],
            "peak_mem_mb": round(self._peak, 1),
            "memory": "cuda_max_allocated" if self._device.type == "cuda" else "rss_above_idle",
        })  # fmt: skip
        self.record.setdefault("val", {})
        if trainer.is_global_zero:
            write_record(self.path, self.record)


def plain_row(spec: dict[str, Any], record_path: str | Path) -> dict[str, Any]:
    """Run :func:`~llm_course.optimization.plain_loop.fit_plain` with ``spec`` and write its record.

    A non-finite loss or gradient norm is recorded (``status: non_finite``) and returned, not raised.
    """
    from llm_course.optimization.plain_loop import fit_plain

    try:
        record = {**fit_plain(**spec), "status": "ok", "non_finite": False, "stopped_at_step": None, "reason": None}
    except NonFiniteError as err:
        record = {"loop": "plain", "precision": spec.get("precision"), "compile": spec.get("compile", False),
                  "steps": 0, "samples": 0, "step_end_seconds": [], "losses": [], "val": {},
                  **failure(err, getattr(err, "step", None))}  # fmt: skip
    write_record(record_path, record)
    return record


if __name__ == "__main__":  # python -m llm_course.optimization.probes SPEC_JSON RECORD_PATH
    plain_row(json.loads(sys.argv[1]), sys.argv[2])
