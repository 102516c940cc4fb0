"""How one row of ``llm-course bench precision`` runs: its command, its process, its timing.

A row is a loop (the Lightning Trainer or the plain loop), a precision and compiled-or-not. :func:`run_row` starts
it in a fresh process (``python -m llm_course fit ...`` with :class:`~llm_course.optimization.probes.RunRecord`, or
``python -m llm_course.optimization.probes``) and reads back the record it wrote.
"""

import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_course.errors import ConfigError


@dataclass(frozen=True)
class Row:
    """One measured setting: a loop (``lightning`` or ``plain``), a precision, compiled or eager."""

    loop: str
    precision: str
    compile: bool = False

    @property
    def name(self) -> str:
        return f"{self.loop} {self.precision}" + (" compiled" if self.compile else "")

    @property
    def label(self) -> str:
        extra = "\n+compile" if self.compile else "\nplain loop" if self.loop == "plain" else ""
        return self.precision + extra


def cannot_run(precision: str, cuda: bool, explicit: bool) -> str | None:
    """Why this machine does not run ``precision`` (``None``: it does)."""
    import torch

    if precision.startswith("16") and not cuda:
        if precision == "16-mixed":
            return ("needs a CUDA GPU: fp16 autocast with a GradScaler, which the course refuses on a CPU "
                    "(bf16-mixed is the CPU's mixed precision)")  # fmt: skip
        if not explicit:
            return "a GPU row (pure fp16 weights and AdamW state); on a CPU run it by naming it in --precisions"
    if precision.startswith("bf16") and cuda and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 support (torch.cuda.is_bf16_supported() is False): use 16-mixed"
    return None


def hardware(cuda: bool) -> dict[str, Any]:
    """The device and whether it multiplies bf16 in hardware (CPU: AVX512-BF16 or AMX units; else emulated)."""
    import torch

    if cuda:
        major, minor = torch.cuda.get_device_capability()
        return {"device": "cuda", "gpu": torch.cuda.get_device_name(), "capability": f"{major}.{minor}",
                "bf16_supported": torch.cuda.is_bf16_supported()}  # fmt: skip
    flags = {name: bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: None)())
             for name in ("avx512_bf16", "amx_tile", "amx_fp16", "avx2")}  # fmt: skip
    return {"device": "cpu", "cpu_flags": flags, "bf16_in_hardware": flags["avx512_bf16"] or flags["amx_tile"],
            "threads": torch.get_num_threads()}  # fmt: skip


def task_settings(task_config: str) -> dict[str, Any]:
    """The task config's training settings that the plain loop must share with the Trainer.

    Raises:
        ConfigError: the config's optimizer is not AdamW or its schedule not ``WarmupDecayLR`` (or none), the two
            the plain loop implements.
    """
    from lightning.pytorch.core.saving import load_hparams_from_yaml  # a plain YAML reader, despite its name

    cfg = load_hparams_from_yaml(task_config) or {}
    model = (cfg.get("model") or {}).get("init_args") or {}
    data = (cfg.get("data") or {}).get("init_args") or {}
    trainer = cfg.get("trainer") or {}
    opt, sched = model.get("optimizer") or {}, model.get("scheduler") or {}
    if opt and not str(opt.get("class_path", "")).endswith("AdamW"):
        raise ConfigError(f"{task_config}: model.init_args.optimizer={opt.get('class_path')}; the plain loop "
                          "implements AdamW only")  # fmt: skip
    if sched and not str(sched.get("class_path", "")).endswith("WarmupDecayLR"):
        raise ConfigError(f"{task_config}: model.init_args.scheduler={sched.get('class_path')}; the plain loop "
                          "implements llm_course.training.WarmupDecayLR (or none) only")  # fmt: skip
    o, s = opt.get("init_args") or {}, sched.get("init_args") or {}
    return {
        "model_name_or_path": model.get("model_name_or_path", "minilm"),
        "dropout": model.get("dropout"),
        "freeze_embeddings": bool(model.get("freeze_embeddings", False)),
        "lr": float(o.get("lr", 1e-3)),
        "weight_decay": float(o.get("weight_decay", 0.01)),
        "warmup_ratio": float(s.get("warmup_ratio", 0.0)) if sched else 0.0,
        "decay": s.get("decay", "linear") if sched else "constant",
        "gradient_clip_val": trainer.get("gradient_clip_val"),
        "label_names": data.get("label_names"),
        "truncation": data.get("truncation", "head"),
        "head_fraction": float(data.get("head_fraction", 0.25)),
        "eval_batch_size": int(data.get("eval_batch_size", 64)),
        "group_by_length": bool(data.get("group_by_length", True)),
    }


def lightning_command(row: Row, c: dict[str, Any], record: Path) -> list[str]:
    callback = {"class_path": "llm_course.optimization.probes.RunRecord", "init_args": {"path": str(record)}}
    return [
        sys.executable, "-m", "llm_course", "fit", "--config", c["task_config"], f"--seed_everything={c['seed']}",
        f"--model.init_args.model_name_or_path={c['model_name_or_path']}",
        f"--model.init_args.optimizer.init_args.lr={c['lr']}", f"--model.init_args.compile={str(row.compile).lower()}",
        f"--trainer.accelerator={'gpu' if c['cuda'] else 'cpu'}", "--trainer.devices=1",
        f"--trainer.precision={row.precision}", f"--trainer.max_steps={c['steps']}", "--trainer.max_epochs=1",
        "--trainer.accumulate_grad_batches=1", "--trainer.val_check_interval=1.0", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={record.parent}",
        f"--trainer.callbacks={json.dumps([callback])}",
        f"--data.init_args.train_file={c['train_file']}", f"--data.init_args.max_train_samples={c['samples']}",
        f"--data.init_args.batch_size={c['batch_size']}", f"--data.init_args.max_length={c['max_length']}",
        f"--data.init_args.val_fraction={c['val_fraction']}",
        f"--trainer.limit_val_batches={1.0 if c['validate'] else 0}",
    ]  # fmt: skip


def plain_command(row: Row, c: dict[str, Any], record: Path) -> list[str]:
    keys = ("train_file", "model_name_or_path", "label_names", "max_length", "truncation", "head_fraction",
            "val_fraction", "batch_size", "eval_batch_size", "group_by_length", "lr", "weight_decay", "warmup_ratio",
            "decay", "dropout", "freeze_embeddings", "gradient_clip_val", "seed")  # fmt: skip
    spec = {**{k: c[k] for k in keys}, "max_train_samples": c["samples"], "max_steps": c["steps"],
            "precision": row.precision, "compile": row.compile, "device": "cuda" if c["cuda"] else "cpu",
            "validate": c["validate"]}  # fmt: skip
    return [sys.executable, "-m", "llm_course.optimization.probes", json.dumps(spec), str(record)]


def timing(record: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    """Throughput of the steps after the first ``warmup_steps`` (first-step costs, compilation, caches excluded).

    ``samples_per_sec``: samples of those steps / their wall time, every cost between two steps included (the
    figure that Lightning and the plain loop are compared on). ``median_step_samples_per_sec``: from the median step
    time, which also leaves out rare slow steps (a recompilation for a new shape, a pause of the machine).
    ``overhead_seconds``: the whole training time minus steps × median step time.
    """
    ends = record.get("step_end_seconds") or []
    n = len(ends)
    if not n:
        return {}
    per_step = record["samples"] / n
    w = min(warmup_steps, n - 1)
    starts = [0.0, *ends[:-1]]
    steady = [e - s for s, e in zip(starts[w:], ends[w:], strict=True)]
    median = statistics.median(steady)
    return {
        "samples_per_sec": round(per_step * (n - w) / max(ends[-1] - starts[w], 1e-9), 3),
        "median_step_samples_per_sec": round(per_step / max(median, 1e-9), 3),
        "first_step_seconds": round(ends[0], 3),
        "median_step_seconds": round(median, 4),
        "overhead_seconds": round(ends[-1] - n * median, 3),
        "train_seconds": round(ends[-1], 3),
    }


def run_row(row: Row, c: dict[str, Any], runs_dir: Path, index: int, timeout: float, validate: bool = True
            ) -> dict[str, Any]:  # fmt: skip
    """Run one row once in its own process and return its record (with its timing, wall time and log file).

    ``validate``: score the validation split after training (the first run of a row; a repeat only re-measures speed,
    and with the same seed it would give the same score)."""
    from llm_course.distributed.bench import run_process
    from llm_course.sft.probes import CHILD_ENV

    folder = runs_dir / f"{index:02d}_{row.name.replace(' ', '_')}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    record_path, log = folder / "record.json", folder / "run.log"
    command = (lightning_command if row.loop == "lightning" else plain_command)(row, {**c, "validate": validate},
                                                                                record_path)  # fmt: skip
    env = {**os.environ, **CHILD_ENV, "TOKENIZERS_PARALLELISM": "false"}
    about = {"log": str(log), "command": " ".join(command)}
    start = time.perf_counter()
    try:
        run_process(command, env, log, timeout)
    except RuntimeError as err:  # a NaN stop exits with status 1 after writing its record; anything else is an error
        if not record_path.is_file():
            last = [line for line in str(err).splitlines() if line.strip()][-1:]
            return {"status": "error", "reason": " ".join(last) or "failed", "timing": {}, **about}
    about["wall_seconds"] = round(time.perf_counter() - start, 1)
    record = json.loads(record_path.read_text())
    shutil.rmtree(folder / "hf_model", ignore_errors=True)  # TextClassifier's export: 90 MB per run, not needed
    for sub in folder.glob("tensorboard_logs/*/hf_model"):
        shutil.rmtree(sub, ignore_errors=True)
    record["timing"] = timing(record, c["warmup_steps"]) if record.get("status") == "ok" else {}
    record.update(about)
    return record


def plan_rounds(precisions: list[str], repeats: int, pair_repeats: int) -> list[list[Row]]:
    """The runs, round by round: the fp32 Lightning/plain pair first (in ``pair_repeats`` rounds), then the other
    precisions (in ``repeats`` rounds). :func:`bench_precision` appends the compiled row to the first ``repeats``
    rounds once the fastest eager row is known."""
    rounds = []
    for r in range(max(repeats, pair_repeats)):
        runs = [Row("lightning", "32-true")] + ([Row("plain", "32-true")] if r < pair_repeats else [])
        if r < repeats:
            runs += [Row("lightning", p) for p in precisions if p != "32-true"]
        rounds.append(runs)
    return rounds
