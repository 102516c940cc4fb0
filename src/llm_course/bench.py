"""``llm-course bench NAME``: the benchmark registry and the fit-then-test run most benchmarks share.

Benchmarks sit above the CLI: each is a typed function in its task folder (``<task>/bench.py``), named here
by import path and imported only when it runs, so ``llm-course --help`` loads none of them. Each writes
``<output_dir>/<name>.json`` and a figure.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BENCHMARKS: dict[str, str] = {
    "linreg": "llm_course.linreg.bench:bench_linreg",
    "mnist": "llm_course.vision.bench:bench_mnist",
    "vision": "llm_course.vision.bench:bench_vision",
    "imdb": "llm_course.text.bench:bench_imdb",
    "lora-memory": "llm_course.sft.bench:bench_lora_memory",
    "quant-inference": "llm_course.sft.bench:bench_quant_inference",
    "sft": "llm_course.sft.bench:bench_sft",
    "ddp": "llm_course.distributed.bench:bench_ddp",
    "precision": "llm_course.optimization.bench:bench_precision",
    "serve": "llm_course.inference.bench:bench_serve",
    "rag": "llm_course.rag.bench:bench_rag",
    "rag-lora": "llm_course.rag.lora_curve:bench_rag_lora",
    "agent": "llm_course.agent.bench:bench_agent",
}


@dataclass
class FitTestRun:
    """What :func:`fit_then_test` measured: the CLI objects, per-validation history, timings, test metrics."""

    cli: Any
    history: list[dict[str, float]]
    train_seconds: float
    test_seconds: float
    test: dict[str, float]


def fit_then_test(args: list[str], before_fit: Callable[[Any], None] | None = None) -> FitTestRun:
    """Build a task from CLI ``args`` (a config plus overrides), fit it, then test its best checkpoint once.

    The plain progress lines stay on (on stderr), so a long benchmark shows where it is.

    Args:
        args: ``llm-course fit`` arguments without the subcommand (``["--config", path, ...]``).
        before_fit: called with the CLI before training starts (e.g. to prepare data outside the timing).
    """
    from llm_course.callbacks import History
    from llm_course.trainer_cli import CourseCLI

    cli = CourseCLI(args, run=False)
    history = History()
    cli.trainer.callbacks.append(history)
    if before_fit is not None:
        before_fit(cli)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    middle = time.perf_counter()
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    return FitTestRun(cli, history.epochs, middle - start, time.perf_counter() - middle, test)
