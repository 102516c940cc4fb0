"""``llm-course bench ddp``: Module 3's fine-tune on 1 vs N processes (Lightning DDP, and the Accelerate loop).

Every run trains the same fixed subset of a training file with the same global batch for the same number of
optimizer steps, each in a process of its own (``python -m llm_course fit ...``, ``python -m
llm_course.distributed.accelerate_loop ...``, ``accelerate launch ...``), and writes a run record
(:mod:`llm_course.distributed.steplog`) that this benchmark collects.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llm_course.errors import ConfigError, MissingFileError
from llm_course.plotting import subplots
from llm_course.reports import write_report

THROUGHPUT = "samples_per_sec_median_step"  # global batch / median step time: robust to bursts of other load
LIGHTNING_PRECISION = {"32": "32-true", "bf16": "bf16-mixed"}
ACCELERATE_PRECISION = {"32": "no", "bf16": "bf16"}


@dataclass(frozen=True)
class Run:
    """One measured setting: a framework on ``processes`` processes of ``threads`` CPU threads each."""

    framework: str  # lightning | accelerate
    processes: int
    threads: int | None  # None on GPUs: one process per GPU, threads left alone

    @property
    def name(self) -> str:
        return f"{self.framework}_{self.processes}p" + (f"_{self.threads}t" if self.threads else "")

    @property
    def label(self) -> str:
        unit = "GPU" if self.threads is None else "proc"
        threads = f" × {self.threads} thread{'s' * (self.threads > 1)}" if self.threads else ""
        return f"{self.framework}, {self.processes} {unit}{'s' * (self.processes > 1)}{threads}"


def plan(processes: int, cpu: bool, accelerate: bool) -> list[Run]:
    """The runs: 1 process with 1 thread, 1 process with all ``processes`` threads (the fair single-process
    baseline on a machine with that many cores), and ``processes`` processes with 1 thread each; on GPUs 1 vs
    ``processes`` GPUs. The Accelerate loop on 1 and on ``processes`` processes, one thread each, when asked."""
    if cpu:
        runs = [Run("lightning", 1, 1), Run("lightning", 1, processes), Run("lightning", processes, 1)]
    else:
        runs = [Run("lightning", 1, None), Run("lightning", processes, None)]
    if accelerate:
        runs += [Run("accelerate", 1, 1 if cpu else None), Run("accelerate", processes, 1 if cpu else None)]
    return runs


def lightning_command(run: Run, common: dict[str, Any], record: Path) -> list[str]:
    c = common
    callback = {"class_path": "llm_course.distributed.steplog.StepLog", "init_args": {"path": str(record)}}
    # strategy=ddp on one process too: Lightning then orders the training samples as it does on N (its
    # DistributedSampler re-shuffles any training sampler), so the curves compare the same global batches.
    return [
        sys.executable, "-m", "llm_course", "fit", "--config", c["task_config"],
        f"--model.init_args.model_name_or_path={c['model']}",
        f"--trainer.accelerator={'cpu' if c['cpu'] else 'gpu'}", f"--trainer.devices={run.processes}",
        "--trainer.strategy=ddp", f"--trainer.precision={LIGHTNING_PRECISION[c['precision']]}",
        f"--trainer.max_steps={c['steps']}", "--trainer.max_epochs=1",
        "--trainer.accumulate_grad_batches=1", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_checkpointing=false", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={record.parent}", f"--trainer.callbacks={json.dumps([callback])}",
        f"--data.init_args.train_file={c['train_file']}", f"--data.init_args.max_train_samples={c['samples']}",
        f"--data.init_args.batch_size={c['global_batch_size'] // run.processes}",
        f"--data.init_args.max_length={c['max_length']}", "--data.init_args.group_by_length=false",
    ]  # fmt: skip


def accelerate_command(run: Run, common: dict[str, Any], record: Path) -> list[str]:
    c = common
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", c["accelerate_config"],
                "--num_processes", str(run.processes), "--main_process_port", "0"]  # fmt: skip
    return [
        *(launcher if run.processes > 1 else [sys.executable]), "-m", "llm_course.distributed.accelerate_loop",
        f"--train_file={c['train_file']}", f"--max_train_samples={c['samples']}", f"--max_steps={c['steps']}",
        f"--batch_size={c['global_batch_size'] // run.processes}", f"--max_length={c['max_length']}",
        "--group_by_length=false", "--validate=false", "--save_model=false", f"--cpu={str(c['cpu']).lower()}",
        f"--mixed_precision={ACCELERATE_PRECISION[c['precision']]}",
        f"--output_dir={record.parent}", f"--model_name_or_path={c['model']}",
    ]  # fmt: skip


def run_process(command: list[str], env: dict[str, str], log: Path, timeout: float) -> float:
    """Run ``command`` (and every process it starts) with output to ``log``; kill them all after ``timeout`` s.

    Returns:
        The wall time in seconds.

    Raises:
        RuntimeError: the command failed or ran out of time; the message ends with the tail of ``log``.
    """
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's workers too: a hung rank must not outlive us
            proc.wait()
            code = f"killed after {timeout:.0f} s"
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{' '.join(command)}\nexit status {code}; the end of {log}:\n{tail}")
    return time.perf_counter() - start


def bench_ddp(
    train_file: str,
    output_dir: str = "outputs/bench",
    processes: int = 2,
    global_batch_size: int = 16,
    steps: int = 20,
    max_length: int = 128,
    precision: Literal["32", "bf16"] = "32",
    accelerate: bool = False,
    accelerator: Literal["auto", "cpu", "gpu"] = "auto",
    model_name_or_path: str = "minilm",
    task_config: str = "configs/imdb.yaml",
    accelerate_config: str = "configs/accelerate/cpu_2proc.yaml",
    timeout: float = 1800,
) -> dict:
    """Throughput, scaling efficiency, gradient-sync check and memory of 1 vs ``processes`` processes.

    Every run trains the first ``steps`` × ``global_batch_size`` reviews of a seeded shuffle of ``train_file``
    (after the validation split) for ``steps`` optimizer steps at a global batch of ``global_batch_size``: one
    process takes the whole batch, N processes 1/N of it each, so the loss curves of 1 and N processes should
    overlap (DDP averages the gradients of the N shards, which is the gradient of the whole batch). On a CPU
    each process gets one thread, and the one-process run is repeated with ``processes`` threads, the fair
    baseline on a machine with that many cores. On GPUs, one process per GPU.

    Reported per run: throughput of the training steps alone (forward, backward, all-reduce, optimizer step):
    ``samples_per_sec_median_step`` (global batch ÷ median step time, which the summaries use: the first step's
    warm-up and bursts of load from other programs do not move it) and ``samples_per_sec`` (all steps); the loss
    of every step (averaged over processes); the peak memory of each process (resident set on a CPU, CUDA
    allocator on a GPU); the machine's load average before and after. Summaries, by framework:
    ``scaling_efficiency`` = N-process samples/s ÷ (N × one-process samples/s, one thread on a CPU);
    ``speedup_vs`` = N-process samples/s ÷ those of each one-process run of that framework, keyed by the run it
    divides by (``1p_1t``: one process, one thread; ``1p_Nt``, e.g. ``1p_2t``: one process on all N threads, the
    fair baseline on N cores, run for Lightning only; ``1p``: one GPU). Older reports
    (``notes/figures/module5_ddp.json``, 2026-11-30) have ``speedup_vs_one_process`` instead, a key with two
    meanings: Lightning's ratio divides by ``1p_2t``, Accelerate's by ``1p_1t``.

    Args:
        train_file: the training texts (e.g. ``../shared/data/imdb/train.jsonl.gz``).
        output_dir: where ``ddp.json``, ``ddp.png`` and the runs (``ddp_runs/``: records and logs) go.
        processes: processes (CPU) or GPUs of the multi-process runs.
        global_batch_size: samples per optimizer step, all processes together; divisible by ``processes``.
        steps: optimizer steps per run.
        max_length: tokens per text.
        precision: ``32`` (fp32) or ``bf16`` (bf16 autocast: ``bf16-mixed`` in Lightning, ``bf16`` in Accelerate),
            the same in every run whatever the task config says.
        accelerate: also run the Accelerate loop on 1 and ``processes`` processes.
        accelerator: ``cpu``, ``gpu``, or ``auto`` (GPUs when CUDA is available).
        model_name_or_path: the model to fine-tune (``minilm``: the embedded MiniLM-L6).
        task_config: the Lightning config of the task; the Accelerate loop's defaults are ``configs/imdb.yaml``'s
            (optimizer, schedule, clipping, dropout, truncation, validation share).
        accelerate_config: the ``accelerate launch`` config file of the multi-process Accelerate run.
        timeout: seconds allowed per run before its processes are killed.
    """
    import torch

    if not Path(train_file).is_file():
        raise MissingFileError(f"--train_file={train_file} does not exist")
    for flag, path in (("--task_config", task_config), ("--accelerate_config", accelerate_config)):
        if not Path(path).is_file():
            raise MissingFileError(f"{flag}={path} does not exist (run from the repository root or give a path)")
    if processes < 2 or global_batch_size % processes:
        raise ConfigError(f"--processes={processes} and --global_batch_size={global_batch_size}: need at least 2 "
                          "processes, and a global batch that they divide evenly")  # fmt: skip
    cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not cpu and torch.cuda.device_count() < processes:
        raise ConfigError(f"--processes={processes} GPUs asked for, {torch.cuda.device_count()} visible")
    common = {"train_file": str(Path(train_file).resolve()), "samples": steps * global_batch_size, "steps": steps,
              "global_batch_size": global_batch_size, "max_length": max_length, "model": model_name_or_path,
              "precision": precision,
              "task_config": task_config, "accelerate_config": accelerate_config, "cpu": cpu}  # fmt: skip
    runs_dir = Path(output_dir) / "ddp_runs"
    runs_dir.mkdir(parents=True, exist_ok=True)

    records: dict[str, dict[str, Any]] = {}
    for run in plan(processes, cpu, accelerate):
        record = runs_dir / run.name / "metrics.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.unlink(missing_ok=True)
        make = lightning_command if run.framework == "lightning" else accelerate_command
        command = make(run, common, record)
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        if run.threads:
            env |= {"OMP_NUM_THREADS": str(run.threads), "MKL_NUM_THREADS": str(run.threads)}
        load_before = os.getloadavg()[0]
        wall = run_process(command, env, runs_dir / f"{run.name}.log", timeout)
        shutil.rmtree(record.parent / "hf_model", ignore_errors=True)  # 90 MB per run that nothing here reads
        records[run.name] = {**json.loads(record.read_text()), "label": run.label, "processes": run.processes,
                             "threads": run.threads, "wall_seconds": round(wall, 1),
                             # the 1-minute load average: above the core count, other programs took CPU time
                             "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                             "command": " ".join(command)}  # fmt: skip
        r = records[run.name]
        print(f"{run.label}: {r[THROUGHPUT]:.2f} samples/s (median step; mean {r['samples_per_sec']:.2f}), "
              f"final loss {r['losses'][-1]:.4f}, peak {max(r['peak_mem_mb']):.0f} MiB per process, "
              f"{wall:.0f} s in all, load average {r['load_average']}", flush=True)  # fmt: skip

    results = summarize(records, processes, cpu)
    keys = ("samples", "steps", "global_batch_size", "max_length", "precision")
    results["settings"] = {**{k: common[k] for k in keys},
                           "model": model_name_or_path, "processes": processes,
                           "device": "cpu" if cpu else "gpu", "train_file": str(train_file),
                           "task_config": task_config, "accelerate_config": accelerate_config}  # fmt: skip
    results["runs"] = records
    path = write_report(output_dir, "ddp", results, figure(records, results, processes, cpu))
    print(json.dumps({k: results[k] for k in ("scaling_efficiency", "speedup_vs", "loss_max_abs_diff")}),
          f"-> {path}")  # fmt: skip
    return results


def summarize(records: dict[str, dict[str, Any]], processes: int, cpu: bool) -> dict[str, Any]:
    """Scaling efficiency, speed-ups and the loss-curve gap of N vs 1 process, per framework.

    ``speedup_vs[framework]`` holds one ratio per one-process run that framework made, keyed by that run's name
    without the framework (``1p_1t``, ``1p_2t``, ``1p``), so a ratio always says what it divides by.
    """
    out: dict[str, dict[str, Any]] = {"scaling_efficiency": {}, "speedup_vs": {}, "loss_max_abs_diff": {}}
    for fw in ("lightning", "accelerate"):
        one = records.get(Run(fw, 1, 1 if cpu else None).name)
        many = records.get(Run(fw, processes, 1 if cpu else None).name)
        if not (one and many):
            continue
        out["scaling_efficiency"][fw] = round(many[THROUGHPUT] / (processes * one[THROUGHPUT]), 3)
        baselines = [Run(fw, 1, threads) for threads in ((1, processes) if cpu else (None,))]
        out["speedup_vs"][fw] = {run.name.removeprefix(f"{fw}_"): round(many[THROUGHPUT] / r[THROUGHPUT], 3)
                                 for run in baselines if (r := records.get(run.name))}  # fmt: skip
        gaps = [abs(a - b) for a, b in zip(one["losses"], many["losses"], strict=True)]
        out["loss_max_abs_diff"][fw] = float(f"{max(gaps):.3g}")
    for n in (1, processes):  # the same setting, the two frameworks
        lit, acc = (records.get(Run(fw, n, 1 if cpu else None).name) for fw in ("lightning", "accelerate"))
        if lit and acc:
            ratios = out.setdefault("accelerate_vs_lightning_samples_per_sec", {})
            ratios[f"{n}p"] = round(acc[THROUGHPUT] / lit[THROUGHPUT], 3)
    return out


def figure(records: dict[str, dict[str, Any]], results: dict[str, Any], processes: int, cpu: bool):
    """Loss curves of every run on one plot, samples/s per run, peak memory per process."""
    fig, (ax1, ax2, ax3) = subplots(1, 3, figsize=(17, 4.8))
    styles = {1: "-", processes: "--"}
    for r in records.values():
        if r["processes"] == 1 and r["threads"] not in (None, 1):
            continue  # the same curve as one thread: thread count changes speed, not the arithmetic
        ax1.plot(range(1, len(r["losses"]) + 1), r["losses"], styles[r["processes"]], marker=".", label=r["label"])
    gaps = ", ".join(f"{fw} {gap:.1e}" for fw, gap in results["loss_max_abs_diff"].items())
    ax1.set(xlabel="optimizer step", ylabel="training loss (global batch)",
            title=f"1 vs {processes} processes, same global batch\nmax |difference|: {gaps}")  # fmt: skip
    ax1.legend(fontsize=8)
    names = list(records)
    labels = [r["label"].replace(", ", "\n", 1).replace(" × ", "\n× ") for r in records.values()]
    colors = ["tab:blue" if r["framework"] == "lightning" else "tab:orange" for r in records.values()]
    bars = ax2.bar(range(len(names)), [r[THROUGHPUT] for r in records.values()], color=colors)
    ax2.bar_label(bars, fmt="%.1f", fontsize=8)
    effs = ", ".join(f"{fw} {e:.2f}" for fw, e in results["scaling_efficiency"].items())
    ax2.set(ylabel="samples/s (training steps only, median step)", title=f"throughput; scaling efficiency: {effs}")
    ax2.set_xticks(range(len(names)), labels, fontsize=7)
    bars = ax3.bar(range(len(names)), [max(r["peak_mem_mb"]) for r in records.values()], color=colors)
    ax3.bar_label(bars, fmt="%.0f", fontsize=8)
    kind = "resident set" if cpu else "CUDA allocated"
    ax3.set(ylabel=f"peak memory per process, MiB ({kind})", title="memory of the largest process")
    ax3.set_xticks(range(len(names)), labels, fontsize=7)
    fig.tight_layout()
    return fig
