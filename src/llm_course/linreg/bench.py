"""``llm-course bench linreg``: gradient descent through the Trainer against the closed-form least-squares fit."""

import time
from functools import partial
from typing import Literal

import lightning as L
import torch

from llm_course.linreg.data import RegressionDataModule
from llm_course.linreg.module import RegressionTask
from llm_course.plotting import subplots
from llm_course.reports import write_report


def _rmse(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.sqrt(torch.mean((pred - y) ** 2)))


def bench_linreg(
    source: Literal["synthetic", "boston"] = "boston",
    output_dir: str = "outputs/bench",
    max_epochs: int = 200,
    lr: float = 0.01,
    batch_size: int = 32,
    seed: int = 42,
) -> dict[str, float]:
    """Train linear regression with SGD and compare its test RMSE with the exact least-squares solution.

    The closed form (``torch.linalg.lstsq`` on the training split) is the best any linear model can do
    on that split, so the gap measures how far the optimizer got, not the model's capacity.

    Args:
        source: ``boston`` or ``synthetic``.
        output_dir: where ``linreg.json`` and ``linreg.png`` are written.
        max_epochs: SGD epochs.
        lr: SGD learning rate.
        batch_size: rows per batch.
        seed: seed for the run and the split.
    """
    L.seed_everything(seed, verbose=False)
    data = RegressionDataModule(source=source, batch_size=batch_size, seed=seed)
    data.setup()
    model = RegressionTask(in_features=data.num_features, optimizer=partial(torch.optim.SGD, lr=lr, momentum=0.9))
    trainer = L.Trainer(
        max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=output_dir,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, data)
    train_seconds = time.perf_counter() - start

    x_train, y_train = data.train_set.tensors
    x_test, y_test = data.test_set.tensors
    ones = torch.ones(len(x_train), 1)
    solution = torch.linalg.lstsq(torch.cat([x_train, ones], 1).double(), y_train.double().unsqueeze(1)).solution
    exact = (torch.cat([x_test, torch.ones(len(x_test), 1)], 1).double() @ solution).squeeze(1).float()
    model.eval()
    with torch.inference_mode():
        sgd = model(x_test)
    results = {
        "source": source,
        "test_samples": len(y_test),
        "sgd_test_rmse": _rmse(sgd, y_test),
        "exact_test_rmse": _rmse(exact, y_test),
        "train_seconds": round(train_seconds, 2),
        "settings": {"max_epochs": max_epochs, "lr": lr, "batch_size": batch_size, "seed": seed},
    }
    results["rmse_ratio"] = results["sgd_test_rmse"] / results["exact_test_rmse"]

    fig, ax = subplots(figsize=(5, 5))
    ax.scatter(y_test, exact, s=12, label=f"least squares (RMSE {results['exact_test_rmse']:.3f})")
    ax.scatter(y_test, sgd, s=12, marker="x", label=f"SGD, Lightning (RMSE {results['sgd_test_rmse']:.3f})")
    lims = [float(y_test.min()), float(y_test.max())]
    ax.plot(lims, lims, "k--", lw=1)
    ax.set(xlabel="true target", ylabel="prediction", title=f"Linear regression on {source}: test split")
    ax.legend()
    path = write_report(output_dir, "linreg", results, fig)
    print(f"test RMSE: SGD {results['sgd_test_rmse']:.4f} vs exact {results['exact_test_rmse']:.4f} -> {path}")
    return results
