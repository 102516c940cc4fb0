"""Module 3's fine-tune as a plain PyTorch training loop driven by Hugging Face Accelerate.

The same network (``TextClassifier``'s Hugging Face model) and the same data (``TextClassificationDataModule``:
files, cached tokenization, samplers, padding) as ``llm-course fit --config configs/imdb.yaml``, with the Trainer's
work written out: ``Accelerator.prepare`` wraps the model in DDP and shards the loaders, ``accelerator.backward``
and ``accelerator.accumulate`` do the backward pass and skip the gradient all-reduce on accumulation steps,
``gather_for_metrics`` collects the validation predictions of every process (dropping the repeats that even out
the last batch), and the main process saves. The defaults are ``configs/imdb.yaml``'s.

Launch it as one plain process, with ``accelerate launch`` or with ``torchrun``::

    python -m llm_course.distributed.accelerate_loop --train_file train.jsonl.gz
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m llm_course.distributed.accelerate_loop \\
        --train_file train.jsonl.gz
    torchrun --nproc_per_node=2 -m llm_course.distributed.accelerate_loop --train_file train.jsonl.gz

``batch_size`` is per process, as in Lightning: N processes train on a global batch of N × ``batch_size``.
"""

import math
import os
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from llm_course.distributed.steplog import run_record, write_record
from llm_course.errors import NonFiniteError
from llm_course.memory import peak_mb, reset_peak


def train(
    train_file: str,
    val_file: str | None = None,
    output_dir: str = "outputs/accelerate",
    model_name_or_path: str = "minilm",
    label_names: list[str] | None = None,
    max_length: int = 128,
    truncation: Literal["head", "head_tail"] = "head_tail",
    head_fraction: float = 0.25,
    val_fraction: float = 0.04,
    max_train_samples: int | None = None,
    batch_size: int = 32,
    eval_batch_size: int = 64,
    group_by_length: bool = True,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.06,
    decay: Literal["linear", "cosine", "constant"] = "linear",
    dropout: float | None = 0.0,
    freeze_embeddings: bool = True,
    epochs: int = 1,
    max_steps: int = -1,
    gradient_accumulation_steps: int = 1,
    gradient_clip_val: float | None = 1.0,
    mixed_precision: Literal["no", "bf16", "fp16"] | None = None,
    cpu: bool | None = None,
    seed: int = 42,
    log_every_n_steps: int = 10,
    validate: bool = True,
    save_model: bool = True,
    cache: str | None = None,
) -> dict:
    """Fine-tune a sequence classifier with a plain loop under ``accelerate``, then evaluate it once.

    Writes ``<output_dir>/metrics.json`` (validation metrics, the loss of every optimizer step averaged over
    processes, samples/s of training alone, peak memory of each process, ``skipped_steps``: the steps fp16's
    GradScaler skipped) and ``<output_dir>/hf_model/``.

    Args:
        train_file: training texts and labels (``.jsonl[.gz]``, ``.csv``, ``.parquet``; ``text``/``label`` columns).
        val_file: validation file; default: ``val_fraction`` of ``train_file``, held out with ``seed``.
        output_dir: where ``metrics.json`` and ``hf_model/`` go.
        model_name_or_path: a hub id, a local folder, or ``minilm`` (embedded).
        label_names: names of the label ids (``[neg, pos]`` for IMDb); default: from the data.
        max_length: tokens per text.
        truncation: ``head`` or ``head_tail`` (keep the start and the end of long texts).
        head_fraction: share of the budget taken from the start under ``head_tail``.
        val_fraction: share of ``train_file`` held out for validation when there is no ``val_file``.
        max_train_samples: train on a seeded subset of at most this many texts.
        batch_size: training batch per process; the global batch is ``batch_size`` × processes.
        eval_batch_size: validation batch per process.
        group_by_length: batch texts of similar length together.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: share of the optimizer steps spent in linear warm-up (``WarmupDecayLR``).
        decay: learning-rate decay after the warm-up.
        dropout: every dropout probability of the model; ``None`` keeps the pretrained values.
        freeze_embeddings: keep the input token embeddings as pretrained (``TextClassifier``'s option).
        epochs: passes over the training data.
        max_steps: stop after this many optimizer steps (-1: run all ``epochs``).
        gradient_accumulation_steps: micro-batches per optimizer step; the all-reduce runs on the last only.
        gradient_clip_val: clip the total gradient norm to this (``None`` or 0: no clipping).
        mixed_precision: ``no``, ``bf16`` or ``fp16``; default: what ``accelerate launch`` was given, else ``no``.
        cpu: train on the CPU with gloo; default: when there is no CUDA device.
        seed: seeds the weights of the new head, the validation split and the shuffling.
        log_every_n_steps: print a progress line (main process) every this many optimizer steps.
        validate: evaluate on the validation split after training.
        save_model: save the final weights and the tokenizer to ``<output_dir>/hf_model/``.
        cache: where tokenized splits are cached (default ``$LLM_COURSE_CACHE``).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from llm_course.text import TextClassificationDataModule, TextClassifier
    from llm_course.text.sampling import SortedSampler
    from llm_course.training import WarmupDecayLR, planned_steps

    # On a machine without CUDA, accelerate treats a torchrun-style launch (LOCAL_RANK set) as multi-process only
    # when cpu=True, and then uses gloo; `accelerate launch` does not pass its use_cpu setting to torchrun workers.
    cpu = not torch.cuda.is_available() if cpu is None else cpu
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision,
                              gradient_accumulation_steps=gradient_accumulation_steps)  # fmt: skip
    set_seed(seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)  # the course's samplers shuffle with it, as under Lightning

    dm = TextClassificationDataModule(
        model_name_or_path=model_name_or_path, train_file=train_file, val_file=val_file, label_names=label_names,
        val_fraction=val_fraction, max_train_samples=max_train_samples, max_length=max_length, truncation=truncation,
        head_fraction=head_fraction, batch_size=batch_size, eval_batch_size=eval_batch_size,
        group_by_length=group_by_length, seed=seed, cache=cache,
    )  # fmt: skip
    with accelerator.main_process_first():  # one process tokenizes, the others read its cache
        dm.prepare_data()
        dm.setup("fit")
    classifier = TextClassifier(model_name_or_path, labels=dm.label_names, dropout=dropout,
                                freeze_embeddings=freeze_embeddings)  # fmt: skip
    model = classifier.net  # the plain Hugging Face model: the loop needs no LightningModule
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    # accelerate shards the training loader by whole batches (batch i goes to process i mod N). The validation
    # loader is built here, not with dm.val_dataloader(), which under an initialized process group already
    # hands each rank its own shard (for Lightning); accelerate shards this one, gather_for_metrics reunites it.
    val_set = dm.splits["validation"]
    val_loader = DataLoader(val_set, batch_size=eval_batch_size, collate_fn=dm.collate,
                            sampler=SortedSampler(list(val_set["length"])) if group_by_length else None)  # fmt: skip
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, dm.train_dataloader(), val_loader
    )

    # accelerate syncs (and steps) at the end of each epoch's loader too, as Lightning and the plain loop do
    total_steps = planned_steps(len(train_loader), gradient_accumulation_steps, epochs, max_steps)
    # Not prepared: a prepared scheduler steps once per process at every optimizer step (it assumes a schedule
    # written for one process), so the warm-up and decay would end N times too early.
    scheduler = WarmupDecayLR(optimizer.optimizer, total_steps=total_steps, warmup_ratio=warmup_ratio, decay=decay)

    accelerator.print(f"{accelerator.num_processes} process(es) on {accelerator.device} "
                      f"({accelerator.distributed_type}), {torch.get_num_threads()} thread(s) each; "
                      f"global batch {batch_size * accelerator.num_processes * gradient_accumulation_steps}, "
                      f"{total_steps} optimizer steps")  # fmt: skip
    losses, step_seconds, micro, samples, seconds, step, step_time = [], [], [], 0, 0.0, 0, 0.0
    # fp16: the GradScaler skips a step whose gradients hold an inf/NaN (its signal to lower the scale), as in the
    # plain loop; such a step is counted, not fatal
    scaled, skipped = accelerator.scaler is not None, 0
    reset_peak(accelerator.device)
    model.train()
    for epoch in range(epochs):
        train_loader.set_epoch(epoch)
        for batch in train_loader:
            start = time.perf_counter()
            with accelerator.accumulate(model):  # no_sync() on all but the last micro-batch of a step
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = F.cross_entropy(logits.float(), batch["labels"])
                accelerator.backward(loss)  # divides by gradient_accumulation_steps
                norm = None
                if accelerator.sync_gradients:  # the all-reduced gradients are in: the same on every process
                    norm = accelerator.clip_grad_norm_(model.parameters(), gradient_clip_val or math.inf)
                optimizer.step()  # a no-op on accumulation steps, as is zero_grad
                optimizer.zero_grad()
            micro.append(loss.detach())
            samples += len(batch["labels"])
            if accelerator.sync_gradients:
                scheduler.step()
                step += 1
                # The loss of the global batch: every process's mean over its micro-batches, averaged.
                value = float(accelerator.reduce(torch.stack(micro).mean(), reduction="mean"))
                micro = []
                if scaled and optimizer.step_was_skipped:
                    skipped += 1
                # the same values on every process: all stop together
                check_finite(value, float(norm), step, grad_scaler=scaled)
                losses.append(value)
            elapsed = time.perf_counter() - start
            seconds, step_time = seconds + elapsed, step_time + elapsed
            if not accelerator.sync_gradients:
                continue
            step_seconds.append(step_time)
            step_time = 0.0
            if step % log_every_n_steps == 0 or step == total_steps:
                accelerator.print(f"step {step}/{total_steps}  loss {losses[-1]:.4f}  "
                                  f"{samples * accelerator.num_processes / seconds:.1f} samples/s")  # fmt: skip
            if step >= total_steps:
                break
        if step >= total_steps:
            break

    device = accelerator.device
    peaks = accelerator.gather(torch.tensor([peak_mb(device)], device=device)).tolist()
    seconds = float(accelerator.reduce(torch.tensor(seconds, device=device), reduction="max"))  # the slowest
    samples = int(accelerator.reduce(torch.tensor(samples, device=device), reduction="sum"))
    val = evaluate(accelerator, model, val_loader, classifier.val_metrics.to(device)) if validate else {}
    if val:
        accelerator.print("  ".join(f"{k} {v:.4f}" for k, v in val.items()))
    record = run_record("accelerate", accelerator.num_processes, device, losses, step_seconds, samples, seconds, peaks,
                        val)  # fmt: skip
    record["skipped_steps"] = skipped

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = Path(output_dir)
        write_record(out / "metrics.json", record)
        if save_model:
            accelerator.unwrap_model(model).save_pretrained(out / "hf_model", save_function=accelerator.save)
            dm.tokenizer.save_pretrained(out / "hf_model")
        accelerator.print(f"-> {out / 'metrics.json'}")
    # No destroy_process_group (accelerator.end_training) here: with gloo it sometimes hung for good after the last
    # barrier (seen in CI: rank 0 waiting, rank 1 idle in a futex); the launcher tears the group down as we exit.
    accelerator.wait_for_everyone()
    return record


def check_finite(loss: float, grad_norm: float, step: int, grad_scaler: bool = False) -> None:
    """Stop at the first non-finite loss or gradient norm (the values every process shares), naming the step.

    Under fp16's GradScaler (``grad_scaler``) an inf/NaN gradient norm is not a failure: the scaler skips that step
    and lowers its scale, as the Lightning guard and the plain loop let it. The loss is checked in every case.
    """
    from llm_course.callbacks import LIKELY_CAUSES

    checks = [("The training loss", loss)] + ([] if grad_scaler else [("The gradient norm", grad_norm)])
    for what, value in checks:
        if not math.isfinite(value):
            causes = "\n".join(f"  - {c}" for c in LIKELY_CAUSES)
            raise NonFiniteError(f"{what} is {value} at optimizer step {step}. Likely causes:\n{causes}")


@torch.no_grad()
def evaluate(accelerator, model, loader: DataLoader, metrics) -> dict[str, float]:
    """Loss, accuracy and F1 over every validation sample once, with every process's share gathered.

    F1 is that of ``TextClassifier``: of the positive class with two labels, macro otherwise.
    """
    from llm_course.text.module import compute_metrics

    model.eval()
    loss_sum, count = 0.0, 0
    for batch in loader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        count += len(labels)
        metrics.update(logits, labels)
    values = compute_metrics(metrics)
    model.train()
    return {"val/loss": loss_sum / max(count, 1), "val/samples": count, **{k: float(v) for k, v in values.items()}}


def main(args: list[str] | None = None) -> None:
    """``python -m llm_course.distributed.accelerate_loop``: :func:`train`'s arguments as flags (``--config`` too)."""
    from jsonargparse import auto_cli

    auto_cli(train, args=args, as_positional=False)


if __name__ == "__main__":
    main()
