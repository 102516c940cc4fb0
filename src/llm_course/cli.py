"""The ``llm-course`` command: LightningCLI for ``fit/validate/test/predict`` plus the course's own subcommands.

Every task is a LightningModule + LightningDataModule named by ``class_path`` in one flat YAML, so any
task runs with ``llm-course fit --config configs/<task>.yaml``. Extra subcommands (``env``, ``bench``)
are typed functions parsed by the same jsonargparse machinery, so ``--config`` works for them too.
"""

import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from jsonargparse import auto_cli
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from llm_course.assets import AssetError
from llm_course.bench import BENCHMARKS
from llm_course.callbacks import (
    ExportBestWeights,
    NaNGuard,
    NonFiniteError,
    PlainProgress,
    RNGState,
    TestReport,
    ThroughputMemory,
)
from llm_course.envinfo import env
from llm_course.sft.lora import merge

DEFAULT_ROOT = "outputs"
LOG_NAME = "tensorboard_logs"
EXTRA_COMMANDS: dict[str, Callable[..., Any] | dict[str, Callable[..., Any]]] = {
    "env": env,
    "bench": BENCHMARKS,
    "merge": merge,
}
DESCRIPTION = (
    "llm-course: fit/validate/test/predict any course task from YAML (llm-course fit --config configs/linreg.yaml). "
    f"Other commands: {', '.join(EXTRA_COMMANDS)} (llm-course env --help, llm-course bench --help)."
)


class UserError(ValueError):
    """A mistake in the command line or config that the message explains: printed without a traceback."""


def cpu_has_bf16_units() -> bool:
    """Whether this x86 CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); without, bf16 is emulated.

    Other architectures are not checked (True).
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not any(checks):  # this torch cannot tell: assume the best, warn about nothing
        return True
    return any(check() for check in checks if check is not None)


def check_precision(precision: Any, accelerator: Any) -> None:
    """Refuse fp16 mixed precision where there is no CUDA device; warn where bf16 would be emulated.

    Raises:
        UserError: ``16-mixed`` (or ``16``) was asked for on a CPU.
    """
    on_cpu = accelerator == "cpu" or (accelerator in ("auto", None) and not torch.cuda.is_available())
    if on_cpu and str(precision) in ("16-mixed", "16"):
        raise UserError(
            f"--trainer.precision={precision} needs a CUDA GPU (fp16 autocast with a grad scaler). On CPU use "
            "--trainer.precision=bf16-mixed (bfloat16 autocast, no scaler needed) or 32-true."
        )
    if on_cpu and str(precision).startswith("bf16") and not cpu_has_bf16_units():
        warnings.warn(
            f"--trainer.precision={precision} on a CPU without AVX512-BF16 or AMX: bf16 matmuls are emulated, "
            "about 15x slower than float32 for SmolLM2 here (notes/debug_log.md). For speed on this machine add "
            "--trainer.precision=32-true; keep bf16 for a GPU or an AMX CPU.",
            stacklevel=2,
        )


def default_callbacks(trainer_cfg: dict[str, Any], has_logger: bool) -> list[Callback]:
    """The callbacks every run gets, minus any of the same kind the config already lists."""
    given = list(trainer_cfg.get("callbacks") or [])
    wanted: list[Callback] = [NaNGuard(), ThroughputMemory(), RNGState(), ExportBestWeights(), TestReport()]
    if has_logger:
        wanted.append(LearningRateMonitor(logging_interval="step"))
    if trainer_cfg.get("enable_progress_bar") is not False:
        # Rich redraws in place on a terminal; logs and CI get one plain line per epoch instead.
        wanted.append(RichProgressBar() if sys.stdout.isatty() else PlainProgress())
    taken = {ProgressBar if isinstance(c, ProgressBar) else type(c) for c in given}
    return [c for c in wanted if (ProgressBar if isinstance(c, ProgressBar) else type(c)) not in taken]


class CourseCLI(LightningCLI):
    """LightningCLI in subclass mode with the course's run defaults (outputs/, TensorBoard, checkpoints, seed 42)."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=42,
            trainer_defaults={"default_root_dir": DEFAULT_ROOT, "log_every_n_steps": 10},
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": DESCRIPTION},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Pass a value once: sizes come from the data, the tokenizer name from the model (where a task has them).
        parser.link_arguments("data.num_features", "model.init_args.in_features", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments(
            "model.init_args.model_name_or_path", "data.init_args.model_name_or_path", apply_on="parse"
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]["trainer"] if self.subcommand else self.config["trainer"]
        check_precision(cfg.get("precision"), cfg.get("accelerator"))

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        cfg = self._get(self.config_init, "trainer", default={})
        root = cfg.get("default_root_dir") or DEFAULT_ROOT
        if cfg.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(root, name=LOG_NAME)
        has_logger = kwargs.get("logger", cfg.get("logger")) not in (False, None, [])
        kwargs["callbacks"] = list(cfg.get("callbacks") or []) + default_callbacks(cfg, has_logger)
        return super().instantiate_trainer(**kwargs)


USER_ERRORS = (UserError, AssetError, NonFiniteError, FileNotFoundError, ValueError)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``llm-course``; ``args`` defaults to ``sys.argv[1:]`` (tests pass a list)."""
    argv = list(sys.argv[1:] if args is None else args)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own use of a deprecated torch API
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            auto_cli(EXTRA_COMMANDS, args=argv, as_positional=False)
        else:
            CourseCLI(args=None if args is None else argv)
    except USER_ERRORS as err:
        if os.environ.get("LLM_COURSE_DEBUG"):
            raise
        print(f"error: {err}\n(set LLM_COURSE_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
