"""``llm-course bench imdb``: fine-tune on the IMDb train split, evaluate once on every test review."""

import time
from pathlib import Path

from llm_course.reporting import fit_then_test, plot_confusion_matrix, plt, write_report


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

    Args:
        train_file: IMDb train reviews (e.g. ``../shared/data/imdb/train.jsonl.gz``).
        test_file: IMDb test reviews (e.g. ``../shared/data/imdb/test.jsonl.gz``).
        output_dir: where ``imdb.json``, ``imdb.png`` and the run (``imdb_run/``) are written.
        task_config: the task config to train.
        overrides: extra command-line overrides, e.g. ``["--data.init_args.max_train_samples=8000"]``.
    """
    for path in (train_file, test_file):
        if not Path(path).is_file():
            raise FileNotFoundError(f"--train_file/--test_file: {path} does not exist")
    start = time.perf_counter()

    def prepare(cli) -> None:  # tokenize (or load the cached tokens) before the training clock starts
        cli.datamodule.prepare_data()
        cli.datamodule.setup("fit")
        timings["prepare_seconds"] = round(time.perf_counter() - start, 1)

    timings: dict[str, float] = {}
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
        "test_seconds": round(run.test_seconds, 1),
        "total_seconds": round(total_seconds, 1),
        "train_samples_per_sec": round(n_train * trainer.max_epochs / run.train_seconds, 2),
        "test_samples_per_sec": round(int(cm.sum()) / run.test_seconds, 2),
        "settings": {
            "model": run.cli.model.hparams.model_name_or_path,
            "max_length": hp.max_length,
            "truncation": hp.truncation,
            "head_fraction": hp.head_fraction,
            "precision": str(trainer.precision),
            "epochs": trainer.max_epochs,
            "batch_size": hp.batch_size,
            "group_by_length": hp.group_by_length,
        },  # fmt: skip
        "data": {"train_file": str(train_file), "test_file": str(test_file)},
        "task_config": task_config,
        "overrides": overrides or [],
        "history": history,
    }

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    steps = [e["step"] for e in history]
    ax1.plot(steps, [e["val/f1"] for e in history], "o-", label="validation F1")
    ax1.plot(steps, [e["val/acc"] for e in history], "s-", label="validation accuracy")
    ax1.axhline(results["test_f1"], color="k", ls="--", lw=1, label=f"test F1 {results['test_f1']:.4f}")
    ax1.set(xlabel="optimizer step", ylabel="score", title=f"IMDb, {results['train_samples']} training reviews")
    ax1.legend(loc="lower right")
    plot_confusion_matrix(cm, dm.label_names, f"Test confusion matrix ({results['test_samples']} reviews)", ax=ax2)
    path = write_report(output_dir, "imdb", results, fig)
    print(f"test_f1 {results['test_f1']:.4f} acc {results['test_acc']:.4f} on {results['test_samples']} reviews; "
          f"train {results['train_seconds']} s, total {results['total_seconds']} s -> {path}")  # fmt: skip
    return results
