"""``llm-course bench precision``: Module 3's fine-tune in every precision, compiled or not, Lightning or plain.

Every row trains the same seeded subset of a training file (``steps`` × ``batch_size`` reviews, one epoch), from the
same seed, for the same optimizer steps at the same batch, in a process of its own, and is then scored on the same
validation reviews (in the first run of each row; repeats only re-measure speed). The rows are run round-robin
(``repeats`` rounds; the fp32 Lightning/plain pair ``pair_repeats`` times, alternating), so slow phases of a shared
machine fall on every row alike. The records come from :mod:`llm_course.optimization.probes`.

On a CPU without bf16 units the bf16 rows run fewer steps by default (:mod:`llm_course.optimization.emulated`), and
the benchmark prints its plan before the first run and how long it expects to take after it.
"""

import json
import math
import statistics
from pathlib import Path
from typing import Any, Literal

from llm_course.errors import ConfigError, MissingFileError
from llm_course.optimization.emulated import Clock, EmulatedBf16, bf16_matmul_slowdown
from llm_course.optimization.rows import Row, cannot_run, hardware, plan_rounds, run_row, task_settings
from llm_course.plotting import subplots
from llm_course.reports import write_report

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
RATIO_TARGET = 0.95  # Lightning's throughput as a share of the plain loop's
TIMING_KEYS = ("samples_per_sec", "median_step_samples_per_sec", "median_step_seconds", "first_step_seconds",
               "overhead_seconds")  # fmt: skip


def summarize_row(row: Row, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from its runs: medians of the speeds, the first run's loss curve and validation metrics."""
    first = runs[0]
    out: dict[str, Any] = {"loop": row.loop, "precision": row.precision, "compile": row.compile,
                           "status": first["status"], "reason": first.get("reason"),
                           "non_finite": any(r.get("non_finite") for r in runs),
                           "stopped_at_step": first.get("stopped_at_step")}  # fmt: skip
    ok = [r for r in runs if r.get("timing")]
    if ok:
        for key in TIMING_KEYS:
            out[key] = round(statistics.median(r["timing"][key] for r in ok), 4)
        out["samples_per_sec_runs"] = [r["timing"]["samples_per_sec"] for r in ok]
        out["peak_mem_mb"] = round(statistics.median(r["peak_mem_mb"] for r in ok), 1)
        out["memory"] = first.get("memory")
    val = first.get("val") or {}
    out.update({"val_f1": val.get("val/f1"), "val_loss": val.get("val/loss"), "val_acc": val.get("val/acc")})
    out["losses"] = first.get("losses", [])
    out["runs"] = runs
    return out


def bench_precision(
    train_file: str,
    output_dir: str = "outputs/bench",
    steps: int = 24,
    batch_size: int = 16,
    max_length: int = 128,
    val_fraction: float = 0.02,
    precisions: list[str] | None = None,
    compile: bool = True,
    repeats: int = 1,
    pair_repeats: int = 3,
    warmup_steps: int = 3,
    lr: float | None = None,
    seed: int = 42,
    model_name_or_path: str | None = None,
    task_config: str = "configs/imdb.yaml",
    accelerator: Literal["auto", "cpu", "gpu"] = "auto",
    emulated_bf16: Literal["fewer", "skip", "full"] = "fewer",
    timeout: float = 1800,
) -> dict:
    """Module 3's fine-tune per precision (speed, memory, validation F1, NaN stops), compiled, and without Lightning.

    Rows (Lightning Trainer, the task config's settings): ``32-true``, ``bf16-mixed`` (bf16 autocast, fp32
    weights), ``bf16-true`` (bf16 weights and optimizer state), and on CUDA ``16-mixed`` (fp16 autocast + GradScaler)
    and ``16-true`` (fp16 weights). A precision the machine cannot run is listed with the reason. A run that the
    NaN guard stops is a result (``status: non_finite``, with the step), not a crash. Then ``torch.compile`` on the
    fastest eager row (compile time and steady-state speed apart), and the plain loop
    (:mod:`llm_course.optimization.plain_loop`) in ``32-true`` against the Lightning ``32-true`` row:
    ``lightning_vs_plain`` is the median over the alternated pairs of Lightning samples/s ÷ plain samples/s
    (target ≥ 0.95).

    Per row: ``samples_per_sec`` (training steps after the first ``warmup_steps``, everything between two
    steps included, validation excluded), ``peak_mem_mb`` (CUDA max allocated; on a CPU the resident-set peak
    above the process's idle baseline with its data loaded), ``val_f1``/``val_loss`` after the run, the loss of
    every step; ``steps`` (the steps it ran), ``emulated_bf16`` and, for those rows, ``steps_reason``. Before the
    first run it prints the plan (which rows are emulated bf16, with a matmul probe's slowdown), after the first
    run an estimate of the whole duration (revised after the first emulated row). Writes ``precision.json`` and the
    figure (speed, memory, F1 and the loss curves; emulated-bf16 rows hatched) as ``module4_amp_vs_fp32.png`` and
    ``precision.png``, and each run's log and record under ``precision_runs/``.

    Args:
        train_file: labelled reviews (e.g. ``../shared/data/imdb/train.jsonl.gz``).
        output_dir: where the JSON, the figure and the runs go.
        steps: optimizer steps per run (one epoch over ``steps`` × ``batch_size`` reviews).
        batch_size: reviews per step.
        max_length: tokens per review.
        val_fraction: share of ``train_file`` held out (seeded) and scored after every run.
        precisions: rows to run (default all five); ``32-true`` always runs, it is the reference.
        compile: add the ``torch.compile`` row of the fastest eager precision.
        repeats: rounds of every row.
        pair_repeats: rounds of the fp32 Lightning/plain pair, which gives ``lightning_vs_plain``.
        warmup_steps: first steps left out of the throughput.
        lr: learning rate for every row (default: the task config's).
        seed: ``seed_everything`` of every run: same subset, order and new head weights.
        model_name_or_path: the model to fine-tune (default: the task config's).
        task_config: the Lightning config of the task; the plain loop reads the same optimizer, schedule,
            clipping, dropout and data settings from it.
        accelerator: ``cpu``, ``gpu`` or ``auto`` (the GPU when CUDA is available).
        emulated_bf16: the bf16 rows on a CPU that emulates bf16: ``fewer`` steps (a quarter of ``steps``, at least
            ``warmup_steps`` + 2, over as many batches; their speed stays comparable, their F1 and loss do not),
            ``skip`` them (listed with the reason), or the ``full`` ``steps``. Where bf16 runs in hardware it
            changes nothing.
        timeout: seconds allowed per run.
    """
    import torch

    for flag, path in (("--train_file", train_file), ("--task_config", task_config)):
        if not Path(path).is_file():
            raise MissingFileError(f"{flag}={path} does not exist")
    wanted = list(precisions or PRECISIONS)
    unknown = [p for p in wanted if p not in PRECISIONS]
    if unknown:
        raise ConfigError(f"--precisions: {unknown} not among {', '.join(PRECISIONS)}")
    if steps <= warmup_steps or min(repeats, pair_repeats, batch_size) < 1:
        raise ConfigError(f"--steps={steps} must exceed --warmup_steps={warmup_steps}, and --repeats={repeats}, "
                          f"--pair_repeats={pair_repeats}, --batch_size={batch_size} must be at least 1")  # fmt: skip
    cuda = torch.cuda.is_available() and accelerator != "cpu"
    if accelerator == "gpu" and not cuda:
        raise ConfigError("--accelerator=gpu: no CUDA device is visible")
    c = {**task_settings(task_config), "task_config": task_config, "train_file": str(Path(train_file).resolve()),
         "steps": steps, "batch_size": batch_size, "samples": steps * batch_size, "max_length": max_length,
         "val_fraction": val_fraction, "seed": seed, "cuda": cuda, "warmup_steps": warmup_steps}  # fmt: skip
    c["model_name_or_path"] = model_name_or_path or c["model_name_or_path"]
    c["lr"] = c["lr"] if lr is None else lr
    hw = hardware(cuda)
    emulated = not cuda and not hw.get("bf16_in_hardware") and any(p.startswith("bf16") for p in wanted)
    bf16 = EmulatedBf16(emulated, emulated_bf16, steps, warmup_steps, bf16_matmul_slowdown() if emulated else 1.0)

    rows: dict[str, Row] = {}
    skipped: dict[str, str] = {}
    for p in PRECISIONS:
        if p in wanted or p == "32-true":
            row = rows[f"lightning {p}"] = Row("lightning", p)
            reason = None if p == "32-true" else cannot_run(p, cuda, explicit=precisions is not None)
            if reason or (reason := bf16.skip_reason(row)):
                skipped[row.name] = reason
    runnable = [r.precision for name, r in rows.items() if name not in skipped]
    plan = plan_rounds(runnable, repeats, pair_repeats)
    print(bf16.plan_text(plan, repeats if compile else 0, list(rows.values())), flush=True)
    clock = Clock([(bf16.steps_of(row), bf16.applies(row)) for rnd in plan for row in rnd]
                  + [(steps, False)] * (repeats if compile else 0), bf16.slowdown)  # fmt: skip
    runs_dir = Path(output_dir) / "precision_runs"
    runs: dict[str, list[dict[str, Any]]] = {}
    order: list[str] = []
    compiled: Row | None = None
    for r, planned in enumerate(plan):
        if compiled is not None and r < repeats:
            planned = [*planned, compiled]
        for row in planned:
            record = run_row(row, bf16.settings(row, c), runs_dir, len(order), timeout, validate=row.name not in runs)
            runs.setdefault(row.name, []).append(record)
            order.append(row.name)
            show(row.name, record)
            (runs_dir / "partial.json").write_text(json.dumps(runs, indent=2) + "\n")  # kept if a later run dies
            if line := clock.after(record, runs[order[0]][0], bf16.applies(row), len(order)):
                print(line, flush=True)
        if r == 0 and compile:
            speeds = {n: v[0]["timing"]["samples_per_sec"] for n, v in runs.items()
                      if n.startswith("lightning") and v[0].get("timing")}  # fmt: skip
            if speeds:
                fastest = max(speeds, key=speeds.get)
                compiled = Row("lightning", rows[fastest].precision, compile=True)
                rows[compiled.name] = compiled
                record = run_row(compiled, bf16.settings(compiled, c), runs_dir, len(order), timeout)
                runs[compiled.name] = [record]
                order.append(compiled.name)
                show(compiled.name, record)
    rows["plain 32-true"] = Row("plain", "32-true")

    summary = {name: {"loop": row.loop, "precision": row.precision, "compile": row.compile, "status": "skipped",
                      "reason": skipped[name]} if name in skipped else summarize_row(row, runs[name])
               for name, row in rows.items() if name in skipped or name in runs}  # fmt: skip
    for name, s in summary.items():
        s.update(steps=None if name in skipped else bf16.steps_of(rows[name]), emulated_bf16=bf16.applies(rows[name]))
        if s["emulated_bf16"]:
            s["steps_reason"] = bf16.steps_reason(rows[name])
    results: dict[str, Any] = {
        **pair_summary(runs, pair_repeats),
        "compile": compile_summary(summary, compiled, compile),
        "rows": summary,
        "order": order,
        "hardware": {**hw, "bf16_matmul_slowdown": round(bf16.slowdown, 2)} if emulated else hw,
        "settings": {k: c[k] for k in ("model_name_or_path", "steps", "batch_size", "samples", "max_length",
                                       "val_fraction", "seed", "lr", "weight_decay", "warmup_ratio", "decay",
                                       "gradient_clip_val", "dropout", "freeze_embeddings", "truncation",
                                       "task_config")}
        | {"train_file": str(train_file), "warmup_steps": warmup_steps, "repeats": repeats,
           "pair_repeats": pair_repeats, "emulated_bf16": emulated_bf16,
           "emulated_bf16_steps": bf16.row_steps},
    }  # fmt: skip
    fig = figure(summary, rows, results)
    path = write_report(output_dir, "precision", results, fig)  # precision.json and precision.png, as every bench
    fig.savefig(Path(output_dir) / "module4_amp_vs_fp32.png", dpi=120, bbox_inches="tight")  # the note's figure
    print(json.dumps({k: results[k] for k in ("lightning_vs_plain", "lightning_vs_plain_runs")}), f"-> {path}")
    return results


def show(name: str, record: dict[str, Any]) -> None:
    """One progress line per run: its speed, memory and validation F1, or why it did not finish."""
    t, val = record.get("timing") or {}, record.get("val") or {}
    if not t:
        print(f"{name}: {record['status']} ({record.get('reason')})", flush=True)
        return
    f1 = f", val F1 {val['val/f1']:.4f}" if "val/f1" in val else ""
    print(f"{name}: {t['samples_per_sec']:.2f} samples/s, first step {t['first_step_seconds']:.1f} s, peak "
          f"{record['peak_mem_mb']:.0f} MiB{f1}, {record.get('wall_seconds')} s in all", flush=True)  # fmt: skip


def pair_summary(runs: dict[str, list[dict[str, Any]]], pair_repeats: int) -> dict[str, Any]:
    """Lightning ÷ plain samples/s of each alternated fp32 pair, their median, and how far the loss curves differ."""
    lightning, plain = runs.get("lightning 32-true", []), runs.get("plain 32-true", [])
    pairs = [(a, b) for a, b in zip(lightning[:pair_repeats], plain, strict=False)
             if a.get("timing") and b.get("timing")]  # fmt: skip
    ratios = [a["timing"]["samples_per_sec"] / b["timing"]["samples_per_sec"] for a, b in pairs]
    medians = [a["timing"]["median_step_samples_per_sec"] / b["timing"]["median_step_samples_per_sec"]
               for a, b in pairs]  # fmt: skip
    out: dict[str, Any] = {
        "lightning_vs_plain": round(statistics.median(ratios), 3) if ratios else None,
        "lightning_vs_plain_runs": [round(x, 3) for x in ratios],
        "lightning_vs_plain_median_step": round(statistics.median(medians), 3) if medians else None,
        "lightning_vs_plain_target": RATIO_TARGET,
    }
    if pairs:
        a, b = pairs[0]
        gaps = [abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=False)]
        out["lightning_vs_plain_loss_max_abs_diff"] = float(f"{max(gaps):.3g}") if gaps else None
    return out


def compile_summary(summary: dict[str, dict[str, Any]], compiled: Row | None, asked: bool) -> dict[str, Any]:
    """Compile time and steady-state speed of the compiled row against its eager twin.

    ``compile_seconds``: the compiled run's time beyond its steady state (first-step costs, compilation and any
    recompilation for a new batch shape) minus the eager run's. ``steady_speedup``: median step time, eager ÷
    compiled. ``break_even_steps``: steps after which compiling has paid for itself.
    """
    if not asked:
        return {"status": "skipped", "reason": "--compile=false"}
    if compiled is None:
        return {"status": "skipped", "reason": "no eager row finished"}
    eager, comp = summary.get(f"lightning {compiled.precision}", {}), summary.get(compiled.name, {})
    if comp.get("status") != "ok" or "median_step_samples_per_sec" not in comp:
        return {"status": comp.get("status", "error"), "reason": comp.get("reason"), "precision": compiled.precision}
    speedup = comp["median_step_samples_per_sec"] / eager["median_step_samples_per_sec"]
    compile_seconds = comp["overhead_seconds"] - eager["overhead_seconds"]
    saved_per_step = eager["median_step_seconds"] - comp["median_step_seconds"]
    return {
        "status": "ok",
        "precision": compiled.precision,
        "eager_samples_per_sec": eager["median_step_samples_per_sec"],
        "compiled_samples_per_sec": comp["median_step_samples_per_sec"],
        "steady_speedup": round(speedup, 3),
        "compile_seconds": round(compile_seconds, 1),
        "first_step_seconds": {"eager": eager["first_step_seconds"], "compiled": comp["first_step_seconds"]},
        "break_even_steps": math.ceil(compile_seconds / saved_per_step) if saved_per_step > 0 else None,
        "val_f1": {"eager": eager.get("val_f1"), "compiled": comp.get("val_f1")},
    }


def figure(summary: dict[str, dict[str, Any]], rows: dict[str, Row], results: dict[str, Any]):
    """Four panels side by side: samples/s, peak memory, validation F1, and the loss of every step."""
    fig, (ax1, ax2, ax3, ax4) = subplots(1, 4, figsize=(21, 5))
    names = list(summary)
    labels = [rows[n].label + (f"\nemulated bf16, {summary[n]['steps'] or 0} steps" if summary[n].get("emulated_bf16")
                               else "") for n in names]  # fmt: skip
    colors = ["tab:orange" if rows[n].loop == "plain" else "tab:green" if rows[n].compile else "tab:blue"
              for n in names]  # fmt: skip
    xs = range(len(names))
    panels = ((ax1, "samples_per_sec", "training samples/s (after warm-up)"),
              (ax2, "peak_mem_mb", "peak memory, MiB"), (ax3, "val_f1", "validation F1 after the run"))  # fmt: skip
    for ax, key, title in panels:
        values = [summary[n].get(key) or 0.0 for n in names]
        bars = ax.bar(xs, values, color=colors)
        for bar, n in zip(bars, names, strict=True):
            if summary[n].get("emulated_bf16"):
                bar.set_hatch("//")  # emulated bf16: fewer steps by default, a speed that says little about bf16
        ax.bar_label(bars, labels=[f"{v:.3g}" if v else "" for v in values], fontsize=8)
        for x, n in zip(xs, names, strict=True):
            s = summary[n]
            if s["status"] != "ok":
                note = {"skipped": "not run", "non_finite": f"non-finite\nat step {s.get('stopped_at_step')}"}
                ax.text(x, 0, note.get(s["status"], "error"), ha="center", va="bottom", fontsize=7, rotation=90,
                        color="tab:red")  # fmt: skip
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.15)
    runs = summary.get("lightning 32-true", {}).get("samples_per_sec_runs") or []
    if len(runs) > 1:
        ax1.errorbar(names.index("lightning 32-true"), statistics.median(runs),
                     yerr=[[statistics.median(runs) - min(runs)], [max(runs) - statistics.median(runs)]],
                     color="k", capsize=3)  # fmt: skip
    memory = next((s.get("memory") for s in summary.values() if s.get("memory")), "")
    ax2.set_ylabel("CUDA max allocated" if memory == "cuda_max_allocated" else "resident set above idle", fontsize=8)
    ax3.set_ylim(0, 1.05)
    for n in names:
        if summary[n].get("losses"):
            ax4.plot(range(1, len(summary[n]["losses"]) + 1), summary[n]["losses"], ".-", lw=1,
                     label=n.replace("lightning ", ""))  # fmt: skip
    ax4.set(xlabel="optimizer step", ylabel="training loss", title="loss of every step")
    if ax4.lines:
        ax4.legend(fontsize=7)
    hw, st = results["hardware"], results["settings"]
    units = "in hardware (AVX512-BF16/AMX)" if hw.get("bf16_in_hardware") else "emulated (no AVX512-BF16/AMX)"
    where = hw.get("gpu") or f"CPU, {hw.get('threads')} threads, bf16 {units}"
    if any(s.get("emulated_bf16") for s in summary.values()):
        where += f" (hatched; --emulated_bf16={st['emulated_bf16']})"
    ratio = results.get("lightning_vs_plain")
    fig.suptitle(f"{st['model_name_or_path']}: {st['steps']} steps × {st['batch_size']} reviews × "
                 f"{st['max_length']} tokens on {where}; Lightning/plain samples/s "
                 f"{ratio if ratio is not None else 'n/a'} (target ≥ {RATIO_TARGET})", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig
