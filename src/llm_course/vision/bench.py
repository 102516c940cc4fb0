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


def bench_vision(
    test_images: str,
    test_labels: str,
    output_dir: str = "outputs/bench",
    fashion_dir: str | None = "/usr/share/datasets/fashion-mnist",
    overrides: list[str] | None = None,
) -> dict:
    """The MLP and the CNN of Module 2 on the same 5,000 embedded digits and the same MNIST test set, then the CNN on
    Fashion-MNIST (60,000 training images from Debian's ``dataset-fashion-mnist``, its 10,000-image test set).

    Each model is selected on its own validation split and tested once. Writes ``vision.json`` and ``vision.png``.

    Args:
        test_images: MNIST test images (IDX), e.g. ``../shared/data/mnist/t10k-images-idx3-ubyte.gz``.
        test_labels: MNIST test labels (IDX).
        output_dir: where the JSON, the figure and the runs go.
        fashion_dir: folder with the four Fashion-MNIST IDX files (none: skip Fashion-MNIST).
        overrides: extra overrides for every run, e.g. ``["--trainer.max_epochs=2"]`` for a quick check.
    """
    from llm_course.plotting import subplots

    for path in (test_images, test_labels):
        if not Path(path).is_file():
            raise FileNotFoundError(f"--test_images/--test_labels: {path} does not exist")
    runs = {
        "mnist_mlp": ["--config", "configs/mnist_mlp.yaml", f"--data.init_args.test_images={test_images}",
                      f"--data.init_args.test_labels={test_labels}"],
        "mnist_cnn": ["--config", "configs/mnist.yaml", f"--data.init_args.test_images={test_images}",
                      f"--data.init_args.test_labels={test_labels}"],
    }  # fmt: skip
    if fashion_dir:
        runs["fashion_cnn"] = ["--config", "configs/fashion_mnist.yaml", f"--data.init_args.data_dir={fashion_dir}"]
    results: dict = {"models": {}, "overrides": overrides or []}
    for name, args in runs.items():
        run = fit_then_test([*args, f"--trainer.default_root_dir={Path(output_dir) / f'vision_{name}'}",
                             *(overrides or [])])  # fmt: skip
        results["models"][name] = {
            "test_acc": round(run.test["test/acc"], 4), "test_f1_macro": round(run.test["test/f1"], 4),
            "parameters": sum(p.numel() for p in run.cli.model.parameters()),
            "train_seconds": round(run.train_seconds, 1), "epochs_run": len(run.history),
            "train_samples": len(run.cli.datamodule.train_set),
            "test_samples": int(run.cli.model.confusion_matrix.sum()),
            "best_val_acc": round(float(run.cli.trainer.checkpoint_callback.best_model_score), 4),
        }  # fmt: skip
        print(f"{name}: {results['models'][name]}")
    fig, axes = subplots(1, 3, figsize=(13, 3.8))
    names = list(results["models"])
    panels = (("test_acc", "test accuracy"), ("parameters", "parameters"), ("train_seconds", "training seconds"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [results["models"][n][key] for n in names]
        bars = ax.bar(names, values, color=["#8c8c8c", "#1f77b4", "#ff7f0e"][: len(names)])
        ax.bar_label(bars, fmt="%.4f" if key == "test_acc" else "%.0f", fontsize=8)
        ax.set_title(title)
        if key == "test_acc":
            ax.set_ylim(min(values) - 0.05, 1.0)
    fig.suptitle("Module 2: MLP vs CNN on 5,000 MNIST digits, and the CNN on Fashion-MNIST")
    fig.tight_layout()
    write_report(output_dir, "vision", results, fig)
    return results
