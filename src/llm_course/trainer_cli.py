"""``llm-course fit/validate/test/predict``: LightningCLI with the course's run defaults.

Every task is a LightningModule + LightningDataModule named by ``class_path`` in one flat YAML (or a base
YAML plus overlays: ``--config base.yaml --config overlay.yaml``). Imported only for these four commands,
so the other commands never pay for Lightning.
"""

import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from llm_course.callbacks import ExportBestWeights, NaNGuard, ProgressLog, RNGState, TestReport, ThroughputMemory
from llm_course.errors import ConfigError, MissingFileError
from llm_course.training import checkpoint_callbacks

DEFAULT_ROOT = "outputs"
LOG_NAME = "tensorboard_logs"
CKPT_ALIASES = ("best", "last", "hpc", "registry")


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
        ConfigError: ``16-mixed`` (or ``16``) was asked for on a CPU.
    """
    if precision == "auto":
        return
    on_cpu = accelerator == "cpu" or (accelerator in ("auto", None) and not torch.cuda.is_available())
    if on_cpu and str(precision) in ("16-mixed", "16"):
        raise ConfigError(
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


def check_strategy(strategy: Any, accelerator: Any) -> None:
    """Refuse, before anything is built, the sharded strategies this machine or install cannot run.

    Lightning's ``FSDPStrategy`` needs CUDA: the Trainer refuses ``accelerator="cpu"`` with it, and torch's
    FSDP wrapper as Lightning calls it (no ``device_id``) needs an accelerator, even though torch's FSDP itself runs
    on gloo (notes/debug_log.md). DeepSpeed needs its package, which the course does not install by default, and
    a CUDA device.

    Raises:
        ConfigError: ``fsdp*`` without a CUDA GPU, or ``deepspeed*`` without the package or a CUDA GPU.
    """
    import importlib.util

    def text(value: Any) -> str:  # a registered name ("fsdp"), or the class_path of a strategy/accelerator
        class_path = value.get("class_path") if hasattr(value, "get") else None
        return value if isinstance(value, str) else str(class_path or type(value).__name__)

    if strategy is None:
        return
    flag = f"--trainer.strategy={text(strategy)}"
    name = text(strategy).rpartition(".")[2].lower()  # fsdp, deepspeed_stage_3, ...FSDPStrategy -> fsdpstrategy
    accel = text(accelerator or "auto").rpartition(".")[2].lower()  # cpu, ...CPUAccelerator -> cpuaccelerator
    no_cuda = not torch.cuda.is_available() or accel.startswith("cpu")
    if name.startswith("fsdp") and no_cuda:
        why = f"this run asks for --trainer.accelerator={text(accelerator)}" if accel.startswith("cpu") else (
            "this machine has no CUDA device")  # fmt: skip
        raise ConfigError(
            f"{flag} needs CUDA GPUs: Lightning's FSDP strategy supports CUDA only, and {why}. On CPU use "
            "--trainer.strategy=ddp (one full replica per process over gloo); keep fsdp for CUDA GPUs "
            "(--trainer.accelerator=gpu)."
        )
    if name.startswith("deepspeed"):
        missing = []
        if importlib.util.find_spec("deepspeed") is None:
            missing.append('the optional deepspeed package (pip install -e ".[deepspeed]" or pip install deepspeed)')
        if no_cuda:
            missing.append("a CUDA GPU (--trainer.accelerator=gpu)")
        if missing:
            raise ConfigError(
                f"{flag} needs {' and '.join(missing)}. Without them use --trainer.strategy=ddp (works on CPU and "
                "GPUs) or, on CUDA GPUs, --trainer.strategy=fsdp (shards parameters, gradients and optimizer state "
                "like ZeRO stage 3)."
            )


def check_checkpoint(ckpt_path: str | None) -> None:
    """Fail early, in one line, on a ``--ckpt_path`` that is missing or not a complete checkpoint.

    ``torch.save`` writes a zip archive whose directory sits at the end of the file, so a file cut short by an
    interrupted copy or save is not a readable zip; torch would fail deep inside ``torch.load`` instead.

    Raises:
        MissingFileError: the file does not exist, or is not a complete checkpoint.
    """
    if ckpt_path is None or str(ckpt_path) in CKPT_ALIASES or "://" in str(ckpt_path):
        return
    path = Path(ckpt_path)
    if not path.is_file():
        raise MissingFileError(f"--ckpt_path={ckpt_path}: no such file. Give a .ckpt file of a run "
                               "(<run>/checkpoints/best.ckpt or last.ckpt) or `best`/`last`.")  # fmt: skip
    if not zipfile.is_zipfile(path):
        raise MissingFileError(
            f"--ckpt_path={ckpt_path} is not a complete checkpoint ({path.stat().st_size:,} bytes, not a readable "
            "torch.save archive): it was probably cut short by an interrupted copy or save. Use another "
            "checkpoint of the run, e.g. <run>/checkpoints/last.ckpt or best.ckpt."
        )


def auto_precision(accelerator: Any = "auto") -> tuple[str, str]:
    """The precision that fits the hardware, and why (LitGPT's ``get_default_supported_precision``, plus the CPU).

    bf16-mixed on GPUs with bf16 units (Ampere and newer), 16-mixed on older GPUs (fp16 autocast + grad scaler),
    bf16-mixed on CPUs that multiply bf16 in hardware (AVX512-BF16 or AMX), 32-true on other CPUs, where bf16 is
    emulated and much slower than fp32.

    Returns:
        ``(precision, reason)``.
    """
    cuda = accelerator in ("gpu", "cuda") or (accelerator in ("auto", None) and torch.cuda.is_available())
    if cuda:
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", "this GPU computes in bfloat16 natively"
        return "16-mixed", "this GPU has no bfloat16 units: float16 autocast with a gradient scaler"
    if cpu_has_bf16_units():
        return "bf16-mixed", "this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX)"
    return "32-true", "this CPU has no AVX512-BF16/AMX, so bfloat16 would be emulated (about 15x slower here)"


class CourseTrainer(L.Trainer):
    """Lightning's Trainer with one more precision choice, ``auto`` (the CLI's default): :func:`auto_precision`
    picks the value for this hardware and logs what it chose and why. An explicit precision always wins."""

    def __init__(
        self, *args: Any, precision: _PRECISION_INPUT | Literal["auto"] | None = "auto", **kwargs: Any
    ) -> None:
        if precision == "auto":
            precision, reason = auto_precision(kwargs.get("accelerator", "auto"))
            rank_zero_info(f"precision: auto -> {precision} ({reason})")
        super().__init__(*args, precision=precision, **kwargs)


def default_callbacks(trainer_cfg: dict[str, Any], model: Any, has_logger: bool) -> list[Callback]:
    """The callbacks every run gets, minus any of the same kind the config already lists.

    Checkpoints (``best.ckpt`` by the task's ``checkpoint_monitor``, and ``last.ckpt``) are added only when the
    user neither turned checkpointing off nor configured a ModelCheckpoint of their own.
    """
    given = list(trainer_cfg.get("callbacks") or [])
    wanted: list[Callback] = [NaNGuard(), ThroughputMemory(), RNGState(), ExportBestWeights(), TestReport()]
    if has_logger:
        wanted.append(LearningRateMonitor(logging_interval="step"))
    if trainer_cfg.get("enable_progress_bar") is not False:
        # Rich redraws in place on a terminal; logs, CI and benchmarks get a line every 30 s on stderr.
        wanted.append(RichProgressBar() if sys.stderr.isatty() else ProgressLog())
    checkpointing = trainer_cfg.get("enable_checkpointing") is not False
    if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in given):
        wanted += checkpoint_callbacks(*getattr(model, "checkpoint_monitor", ("val/loss", "min")))
    taken = {ProgressBar if isinstance(c, ProgressBar) else type(c) for c in given}
    return [c for c in wanted if (ProgressBar if isinstance(c, ProgressBar) else type(c)) not in taken]


class CourseCLI(LightningCLI):
    """LightningCLI in subclass mode with the course's run defaults (outputs/, TensorBoard, checkpoints, seed 42)."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            trainer_class=CourseTrainer,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=42,
            trainer_defaults={"default_root_dir": DEFAULT_ROOT, "log_every_n_steps": 10},
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": "llm-course: train, validate, test or predict a course task from YAML."},
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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        cfg = self.config[subcommand] if subcommand else self.config
        check_checkpoint(cfg.get("ckpt_path"))  # before LightningCLI reads the checkpoint's hyperparameters

    def _parse_ckpt_path(self) -> None:
        """Lightning's: a checkpoint's hyperparameters fill in the model's config, except ``trust_remote_code``,
        which only the user's own flag sets. A file must never switch on running code from the hub."""
        subcommand = self.config.get("subcommand")
        key = f"{subcommand}.model.init_args.trust_remote_code"
        users = self.config.get(key) if subcommand else None
        super()._parse_ckpt_path()
        if subcommand and self.config.get(key) is not None:
            self.config[key] = bool(users)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        check_precision(cfg["trainer"].get("precision"), cfg["trainer"].get("accelerator"))
        check_strategy(cfg["trainer"].get("strategy"), cfg["trainer"].get("accelerator"))

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        cfg = self._get(self.config_init, "trainer", default={})
        root = cfg.get("default_root_dir") or DEFAULT_ROOT
        if cfg.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(root, name=LOG_NAME)
        has_logger = kwargs.get("logger", cfg.get("logger")) not in (False, None, [])
        kwargs["callbacks"] = list(cfg.get("callbacks") or []) + default_callbacks(cfg, self.model, has_logger)
        return super().instantiate_trainer(**kwargs)
