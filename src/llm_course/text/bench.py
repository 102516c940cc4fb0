"""``llm-course bench imdb``: fine-tune on the IMDb train split, evaluate once on every test review."""

import time
from pathlib import Path

import lightning as L

from llm_course.bench import fit_then_test
from llm_course.errors import MissingFileError
from llm_course.plotting import curves_and_confusion
from llm_course.reports import write_report


class TrainingClock(L.Callback):
    """Time and samples of the training batches alone, and the validation time of a fit, kept apart.

    Each training batch is timed from ``on_train_batch_start`` to ``on_train_batch_end``: forward, backward,
    clipping and the optimizer step. Validation runs between two such batches (``val_check_interval`` < 1), so
    it never counts as training; it is timed on its own, sanity check excluded. Also outside both: fetching
    and padding a batch, checkpoint writes, and model set-up.
    """

    def __init__(self) -> None:
        self.train_seconds = self.val_seconds = 0.0
        self.train_samples = 0
        self._start = 0.0

    def _tic(self, *_: object) -> None:
        self._start = time.perf_counter()

    on_train_batch_start = _tic

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.train_seconds += time.perf_counter() - self._start
        self.train_samples += len(batch["labels"])

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_seconds += time.perf_counter() - self._start


def bench_imdb(
    train_file: str,
    test_file: str,
    output_dir: str = "outputs/bench",
    task_config: str = "configs/imdb.yaml",
    overrides: list[str] | None = None,
) -> dict:
    """Train ``task_config`` on ``train_file`` (validation carved from it), then test once on ``test_file``.

    ``total_seconds`` covers everything from reading the files to the last test prediction: tokenization
    (unless cached by an earlier run with the same settings), model loading, training, validation and test.
    ``train_seconds`` is the wall time of ``trainer.fit`` (validation and checkpoints included), of which
    ``train_batch_seconds`` went to the training batches and ``val_seconds`` to validation.
    ``train_samples_per_sec`` is training throughput alone (samples trained / ``train_batch_seconds``);
    ``fit_samples_per_sec`` divides the same samples by ``train_seconds``, validation included.

    Args:
        train_file: IMDb train reviews (e.g. ``../shared/data/imdb/train.jsonl.gz``).
        test_file: IMDb test reviews (e.g. ``../shared/data/imdb/test.jsonl.gz``).
        output_dir: where ``imdb.json``, ``imdb.png`` and the run (``imdb_run/``) are written.
        task_config: the task config to train.
        overrides: extra command-line overrides, e.g. ``["--data.init_args.max_train_samples=8000"]``.
    """
    for path in (train_file, test_file):
        if not Path(path).is_file():
            raise MissingFileError(f"--train_file/--test_file: {path} does not exist")
    start = time.perf_counter()

    def prepare(cli) -> None:  # tokenize (or load the cached tokens) before the training clock starts
        cli.datamodule.prepare_data()
        cli.datamodule.setup("fit")
        cli.trainer.callbacks.append(clock)
        timings["prepare_seconds"] = round(time.perf_counter() - start, 1)

    timings: dict[str, float] = {}
    clock = TrainingClock()
    run = fit_then_test([
        "--config", task_config, f"--data.init_args.train_file={train_file}", f"--data.init_args.test_file={test_file}",
        f"--trainer.default_root_dir={Path(output_dir) / 'imdb_run'}", *(overrides or []),
    ], before_fit=prepare)  # fmt: skip
    total_seconds = time.perf_counter() - start
    dm, trainer, cm, history = run.cli.datamodule, run.cli.trainer, run.cli.model.confusion_matrix, run.history
    hp, n_train = dm.hparams, len(dm.splits["train"])
    results = {
        "test_f1": run.test["test/f1"],
        "test_acc": run.test["test/acc"],
        "test_samples": int(cm.sum()),
        "train_samples": n_train,
        "val_samples": len(dm.splits["validation"]),
        "best_val_f1": float(trainer.checkpoint_callback.best_model_score),
        **timings,
        "train_seconds": round(run.train_seconds, 1),
        "train_batch_seconds": round(clock.train_seconds, 2),
        "val_seconds": round(clock.val_seconds, 2),
        "test_seconds": round(run.test_seconds, 1),
        "total_seconds": round(total_seconds, 1),
        "samples_trained": clock.train_samples,
        "train_samples_per_sec": round(clock.train_samples / max(clock.train_seconds, 1e-9), 2),
        "fit_samples_per_sec": round(clock.train_samples / run.train_seconds, 2),
        "test_samples_per_sec": round(int(cm.sum()) / run.test_seconds, 2),
        "confusion_matrix": cm.tolist(),
        "settings": {
            "model": run.cli.model.hparams.model_name_or_path,
            "max_length": hp.max_length,
            "truncation": hp.truncation,
            "head_fraction": hp.head_fraction,
            "precision": str(trainer.precision),
            "freeze_embeddings": bool(run.cli.model.hparams.get("freeze_embeddings", False)),
            "epochs": trainer.max_epochs,
            "batch_size": hp.batch_size,
            "group_by_length": hp.group_by_length,
        },  # fmt: skip
        "data": {"train_file": str(train_file), "test_file": str(test_file)},
        "task_config": task_config,
        "overrides": overrides or [],
        "history": history,
    }

    fig = curves_and_confusion(
        history, "step", {"val/f1": "validation F1", "val/acc": "validation accuracy"}, "test F1",
        results["test_f1"], cm, dm.label_names, f"IMDb, {results['train_samples']} training reviews",
        f"Test confusion matrix ({results['test_samples']} reviews)",
    )  # fmt: skip
    path = write_report(output_dir, "imdb", results, fig)
    print(f"test_f1 {results['test_f1']:.4f} acc {results['test_acc']:.4f} on {results['test_samples']} reviews; "
          f"train {results['train_seconds']} s, total {results['total_seconds']} s -> {path}")  # fmt: skip
    return results
