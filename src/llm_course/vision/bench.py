"""``llm-course bench mnist``: train on the 5,000 embedded digits, evaluate once on an external test set."""

from pathlib import Path

from llm_course.bench import fit_then_test
from llm_course.plotting import curves_and_confusion
from llm_course.reports import write_report


def bench_mnist(
    test_images: str,
    test_labels: str,
    output_dir: str = "outputs/bench",
    task_config: str = "configs/mnist.yaml",
    overrides: list[str] | None = None,
) -> dict:
    """Train ``config`` on the embedded digits (model selection on their validation split), test once.

    The test set is used exactly once, by the best checkpoint by validation accuracy, after training.

    Args:
        test_images: IDX images of the test set (e.g. ``../shared/data/mnist/t10k-images-idx3-ubyte.gz``).
        test_labels: IDX labels of the test set.
        output_dir: where ``mnist.json``, ``mnist.png`` and the run (``mnist_run/``) are written.
        task_config: the task config to train (``--config`` is the bench command's own config file).
        overrides: extra command-line overrides for the config, e.g. ``["--trainer.max_epochs=5"]``.
    """
    for path in (test_images, test_labels):
        if not Path(path).is_file():
            raise FileNotFoundError(f"--test_images/--test_labels: {path} does not exist")
    run = fit_then_test([
        "--config", task_config, f"--data.init_args.test_images={test_images}",
        f"--data.init_args.test_labels={test_labels}", f"--trainer.default_root_dir={Path(output_dir) / 'mnist_run'}",
        *(overrides or []),
    ])  # fmt: skip
    dm, cm, history = run.cli.datamodule, run.cli.model.confusion_matrix, run.history
    results = {
        "test_acc": run.test["test/acc"],
        "test_f1_macro": run.test["test/f1"],
        "test_loss": run.test["test/loss"],
        "test_samples": int(cm.sum()),
        "train_samples": len(dm.train_set),
        "val_samples": len(dm.val_set),
        "best_val_acc": float(run.cli.trainer.checkpoint_callback.best_model_score),
        "best_epoch": max(history, key=lambda e: e["val/acc"])["epoch"],
        "epochs_run": len(history),
        "train_seconds": round(run.train_seconds, 1),
        "test_data": {"images": str(test_images), "labels": str(test_labels)},
        "task_config": task_config,
        "overrides": overrides or [],
        "history": history,
    }

    fig = curves_and_confusion(
        history, "epoch", {"val/acc": "validation accuracy", "train/acc": "train accuracy"}, "test accuracy",
        results["test_acc"], cm, dm.class_names, f"MNIST, {results['train_samples']} training digits",
        f"Test confusion matrix ({results['test_samples']} digits)", ylim=(0.9, 1.0),
    )  # fmt: skip
    path = write_report(output_dir, "mnist", results, fig)
    print(f"test_acc {results['test_acc']:.4f} on {results['test_samples']} digits, "
          f"train {results['train_seconds']} s -> {path}")  # fmt: skip
    return results
