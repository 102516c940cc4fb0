"""Module 6 benchmarks: ``lora-memory``, ``quant-inference`` and ``sft`` (instruction tuning before/after)."""

import json
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

from llm_course.bench import fit_then_test
from llm_course.errors import ConfigError, MissingFileError
from llm_course.plotting import subplots
from llm_course.reports import write_report
from llm_course.sft.probes import INFER_MODES, TRAIN_MODES, inference_probe, run_modes, train_probe

EVAL_SET = "eval_instructions.jsonl"  # 24 short hand-written instructions with reference answers
HELD_OUT = {"val_size": 200, "test_size": 200}  # the sft benchmark's splits; quant-inference reuses its test split


def bench_lora_memory(
    output_dir: str = "outputs/bench",
    model: str = "smollm2-135m-instruct",
    batch_size: int = 4,
    seq_len: int = 256,
    steps: int = 3,
    lora_r: int = 16,
    gradient_checkpointing: bool = True,
    loss_chunk_size: int = 256,
    modes: list[str] | None = None,
    fresh_process: bool = True,
) -> dict:
    """Peak training memory and step time of a full fine-tune vs LoRA vs QLoRA, each in its own process.

    Same model, batch, sequence length, optimizer (AdamW) and memory savers for every setting. ``full``:
    every weight trained in fp32. ``lora_fp32``: LoRA on fp32 weights. ``lora``: LoRA on bfloat16 weights
    with bf16 autocast. ``qlora``: LoRA on NF4 weights (double quantization), bf16 autocast.

    Args:
        output_dir: where ``lora-memory.json`` and ``lora-memory.png`` go.
        model: the model every setting trains.
        batch_size: sequences per step.
        seq_len: tokens per sequence.
        steps: measured steps per setting (after one warmup step).
        lora_r: LoRA rank (alpha = 2 r), adapters on the architecture's preset layers.
        gradient_checkpointing: recompute activations in backward, in every setting alike.
        loss_chunk_size: the loss without full-vocabulary logits (``model.loss_chunk_size``; 0: the model's own
            loss), in every setting alike.
        modes: settings to run (default: all of full, lora_fp32, lora, qlora).
        fresh_process: each setting in a process of its own, so its memory is its own; false runs them all in this
            process (a quick smoke run: the memory numbers then overlap).
    """
    modes = modes or list(TRAIN_MODES)
    unknown = [m for m in modes if m not in TRAIN_MODES]
    if unknown:
        raise ConfigError(f"--modes: {unknown} not among {', '.join(TRAIN_MODES)}")
    args = (model, batch_size, seq_len, steps, lora_r, gradient_checkpointing, loss_chunk_size)
    runs = run_modes(train_probe, modes, args, Path(output_dir) / "lora-memory.partial.json", fresh_process)
    ratios = {f"{m}_vs_full": round(runs[m]["peak_train_mb"] / runs["full"]["peak_train_mb"], 3)
              for m in modes if m != "full" and "full" in runs}  # fmt: skip
    results = {**ratios, "runs": runs,
               "settings": {"model": model, "batch_size": batch_size, "seq_len": seq_len, "steps": steps,
                            "lora_r": lora_r, "optimizer": "AdamW",
                            "gradient_checkpointing": gradient_checkpointing,
                            "loss_chunk_size": loss_chunk_size, "fresh_process": fresh_process}}  # fmt: skip

    fig, (ax1, ax2) = subplots(1, 2, figsize=(11, 4.2))
    names = list(runs)
    bars = ax1.bar(names, [runs[m]["peak_train_mb"] for m in names], color="tab:blue")
    ax1.bar_label(bars, labels=[f"{runs[m]['peak_train_mb']:.0f} MB" + (f"\n×{ratios[f'{m}_vs_full']:.2f}"
                                if f"{m}_vs_full" in ratios else "") for m in names], fontsize=8)  # fmt: skip
    chunks = [f"loss in chunks of {loss_chunk_size}"] if loss_chunk_size else []
    savers = ["checkpointing"] * gradient_checkpointing + chunks
    ax1.set(ylabel="peak training memory above idle (MiB)",
            title=", ".join([f"{model}, batch {batch_size} × {seq_len}", *savers]))  # fmt: skip
    ax1.margins(y=0.2)
    ax2.bar(names, [runs[m]["step_seconds"] for m in names], color="tab:orange")
    ax2.set(ylabel="seconds per optimizer step", title="step time (median)")
    return {"json": str(write_report(output_dir, "lora-memory", results, fig)), **ratios}


def eval_examples(model: str, data_file: str | None, n: int, where: dict[str, str] | None) -> list[dict[str, Any]]:
    """Tokenized held-out examples of ``data_file`` (split as the sft benchmark splits it), else the packaged set."""
    from llm_course.sft.data import InstructionDataModule
    from llm_course.sft.prompts import load_tokenizer, tokenize_record

    if data_file:
        dm = InstructionDataModule(model, train_file=data_file, where=where, val_size=HELD_OUT["val_size"],
                                   test_size=n, max_length=512)  # fmt: skip
        dm.setup("test")
        return [dict(r) for r in dm.splits["test"]]
    tokenizer = load_tokenizer(model)
    records = [json.loads(line) for line in files("llm_course.sft").joinpath(EVAL_SET).read_text().splitlines()]
    return [tokenize_record(tokenizer, r, 512) for r in records[:n]]


def bench_quant_inference(
    output_dir: str = "outputs/bench",
    model: str = "smollm2-135m-instruct",
    data_file: str | None = None,
    where: dict[str, str] | None = None,
    n_eval: int = 200,
    prompts: list[str] | None = None,
    max_new_tokens: int = 32,
    modes: list[str] | None = None,
    fresh_process: bool = True,
) -> dict:
    """fp32 vs bf16 (vs fp16) vs int8 vs nf4 weights of one model: memory, time to first token, decode speed,
    perplexity.

    The time to first token (prompt forward pass + first greedy step) and the decode speed (tokens after the
    first / time after the first) are measured apart, in one generation per prompt: prefill and decode scale
    differently (prompt length vs weights read per token), and a tokens/s over both mixes them.

    Args:
        output_dir: where ``quant-inference.json`` and ``quant-inference.png`` go.
        model: the model to load in each format.
        data_file: instruction records; perplexity is measured on the responses of ``n_eval`` records held out
            the way the sft benchmark holds out its test split (same seed, after ``val_size`` validation records;
            with the same ``where`` and ``n_eval`` <= 200 they are among its test records). Default: the 24
            instructions packaged with the course.
        where: record filter, as for ``data.where``.
        n_eval: held-out examples to score.
        prompts: instructions for the timing runs (default: the first 4 packaged ones).
        max_new_tokens: tokens generated (greedy) per prompt, at least 2: the first is timed as the time to first
            token, the others as decode speed.
        modes: formats to run (default: fp32, bf16, int8, nf4; name fp16 to run it, a GPU format).
        fresh_process: each format in a process of its own, so its memory is its own; false runs them all in this
            process (a quick smoke run: the memory numbers then overlap).
    """
    modes = modes or [m for m in INFER_MODES if m != "fp16"]
    unknown = [m for m in modes if m not in INFER_MODES]
    if unknown:
        raise ConfigError(f"--modes: {unknown} not among {', '.join(INFER_MODES)}")
    if max_new_tokens < 2:
        raise ConfigError(f"--max_new_tokens={max_new_tokens}: the decode speed needs at least 2 tokens")
    examples = eval_examples(model, data_file, n_eval, where)
    if prompts is None:
        packaged = files("llm_course.sft").joinpath(EVAL_SET).read_text().splitlines()[:4]
        prompts = [json.loads(line)["instruction"] for line in packaged]
    args = (model, prompts, examples, max_new_tokens)
    runs = run_modes(inference_probe, modes, args, Path(output_dir) / "quant-inference.partial.json", fresh_process)
    results = {"runs": runs, "settings": {"model": model, "data_file": data_file or f"llm_course/sft/{EVAL_SET}",
               "eval_examples": len(examples), "prompts": prompts, "max_new_tokens": max_new_tokens,
               "fresh_process": fresh_process}}  # fmt: skip

    cuda = all(runs[m].get("memory") == "cuda_max_allocated" for m in modes)
    fig, axes = subplots(1, 5, figsize=(19, 3.8))
    panels = [("footprint_mb", "weights (MiB)"), ("time_to_first_token_s", "time to first token (s)"),
              ("decode_tokens_per_second", "decode tokens / s (after the first)"),
              ("peak_mb", "peak CUDA memory (MiB)" if cuda else "peak memory above idle (MiB)"),
              ("perplexity", "response perplexity")]  # fmt: skip
    for ax, (key, label) in zip(axes, panels, strict=True):
        bars = ax.bar(modes, [runs[m][key] for m in modes], color="tab:green")
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set(title=label)
        ax.margins(y=0.2)
    fig.suptitle(f"{model}: weight formats on {results['settings']['eval_examples']} held-out responses")
    fig.tight_layout()
    return {"json": str(write_report(output_dir, "quant-inference", results, fig))}


def bench_sft(
    train_file: str,
    output_dir: str = "outputs/bench",
    task_config: str = "configs/sft_lora.yaml",
    where: dict[str, str] | None = None,
    max_steps: int = 150,
    overrides: list[str] | None = None,
) -> dict:
    """Instruction-tune with ``task_config`` and compare held-out response loss before and after.

    ``HELD_OUT`` records are taken from ``train_file`` with the DataModule's seeded split: validation
    (model selection) and test (scored once before training and once with the best checkpoint).

    Args:
        train_file: instruction records, e.g. ``../shared/data/instructions/alpaca_libre.jsonl.gz``.
        output_dir: where ``sft.json``, ``sft.png`` and the run (``sft_run/``) go.
        task_config: the SFT config to train. For QLoRA layer the overlay on top of it:
            ``--overrides '["--config=configs/sft_qlora.yaml"]'``.
        where: record filter, e.g. ``{"status": "ok"}`` for alpaca_libre's records that passed its filters.
        max_steps: optimizer steps.
        overrides: extra command-line overrides, e.g. ``["--trainer.precision=32-true"]``.
    """
    if not Path(train_file).is_file():
        raise MissingFileError(f"--train_file: {train_file} does not exist")
    before: dict[str, Any] = {}

    def score_before(cli) -> None:
        before.update(cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0])
        cli.model.to(cli.trainer.strategy.root_device)  # Lightning moves the module to the CPU after test
        before["answers"] = cli.model.generate(cli.model.hparams.sample_prompts or [])

    start = time.perf_counter()
    run = fit_then_test([
        "--config", task_config, f"--data.init_args.train_file={train_file}",
        f"--data.init_args.val_size={HELD_OUT['val_size']}", f"--data.init_args.test_size={HELD_OUT['test_size']}",
        f"--data.init_args.where={json.dumps(where)}", f"--trainer.max_steps={max_steps}",
        f"--trainer.default_root_dir={Path(output_dir) / 'sft_run'}", *(overrides or []),
    ], before_fit=score_before)  # fmt: skip
    module, dm, trainer = run.cli.model, run.cli.datamodule, run.cli.trainer
    module.to(trainer.strategy.root_device)
    prompts = module.hparams.sample_prompts or []
    batch = dm.hparams.batch_size * trainer.accumulate_grad_batches
    results = {
        "test_loss_before": round(before["test/loss"], 4),
        "test_loss_after": round(run.test["test/loss"], 4),
        "test_ppl_before": round(before["test/ppl"], 3),
        "test_ppl_after": round(run.test["test/ppl"], 3),
        "test_examples": len(dm.splits["test"]),
        "best_val_loss": round(float(trainer.checkpoint_callback.best_model_score), 4),
        "train_records": len(dm.splits["train"]),
        "examples_seen": trainer.global_step * batch,
        "optimizer_steps": trainer.global_step,
        "train_seconds": round(run.train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "samples": [{"prompt": p, "before": b, "after": a}
                    for p, b, a in zip(prompts, before["answers"], module.generate(prompts), strict=True)],  # fmt: skip
        "settings": {"model": module.hparams.model_name_or_path, "finetune": module.hparams.finetune,
                     "quantization": module.hparams.quantization, "lora_r": module.hparams.lora_r,
                     "precision": str(trainer.precision), "batch": batch, "max_length": dm.hparams.max_length},
        "data": {"train_file": train_file, "where": where, **HELD_OUT},
        "task_config": task_config,
        "overrides": overrides or [],
        "history": run.history,
    }  # fmt: skip

    fig, ax = subplots(figsize=(6.5, 4.2))
    ax.plot([e["step"] for e in run.history], [e["val/loss"] for e in run.history], "o-", label="validation loss")
    for when, color in (("before", "tab:red"), ("after", "tab:green")):
        loss = results[f"test_loss_{when}"]
        ax.axhline(loss, color=color, ls="--", label=f"held-out test {when}: {loss}")
    ax.set(xlabel="optimizer step", ylabel="response loss (nats/token)",
           title=f"LoRA instruction tuning, {results['examples_seen']} examples")  # fmt: skip
    ax.legend()
    return {"json": str(write_report(output_dir, "sft", results, fig)), **{k: results[k] for k in list(results)[:4]}}
