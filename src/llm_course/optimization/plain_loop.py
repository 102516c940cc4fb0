"""The loop behind the Trainer: Module 3's fine-tune written out in plain PyTorch.

``llm-course fit --config configs/imdb.yaml`` hands these jobs to the Lightning Trainer: precision (autocast, a
GradScaler, or weights cast to 16 bits), gradient accumulation, clipping, the NaN/Inf guard, the optimizer and the
learning-rate schedule. Here each is a few visible lines, on the same network (the Hugging Face model that
:class:`~llm_course.text.TextClassifier` builds) and the same data (:class:`~llm_course.text.
TextClassificationDataModule`: files, cached tokens, length-grouped batches), so the two loops do the same work and
``llm-course bench precision`` can time one against the other. The defaults are ``configs/imdb.yaml``'s.

Run it on its own::

    python -m llm_course.optimization.plain_loop --train_file train.jsonl.gz --max_steps 20 --precision bf16-mixed
"""

import contextlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from llm_course.errors import ConfigError, NonFiniteError
from llm_course.memory import current_mb, peak_mb, reset_peak

Precision = Literal["32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]


@dataclass(frozen=True)
class PrecisionPlan:
    """What a Lightning precision string means in plain PyTorch.

    Attributes:
        name: the Lightning name (``32-true``, ``bf16-mixed``, ``bf16-true``, ``16-mixed``, ``16-true``).
        param_dtype: the dtype of the weights, their gradients and the optimizer state.
        autocast_dtype: the dtype ``torch.autocast`` runs the matmul-like ops in (``None``: no autocast).
        grad_scaler: whether the loss is scaled before backward (fp16 autocast only).
    """

    name: str
    param_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    grad_scaler: bool


def precision_plan(precision: str, device: torch.device | str = "cpu") -> PrecisionPlan:
    """The plain-PyTorch recipe of a Lightning precision on ``device``.

    ``*-mixed`` keeps fp32 weights and lets autocast run matmuls in 16 bits; ``*-true`` casts the weights
    themselves. fp16 autocast needs a GradScaler: fp16's smallest normal number is 6e-5, and many gradients are
    smaller, so unscaled they flush to zero. bf16 has fp32's exponent range, so its gradients do not underflow and it
    needs no scaler; it pays with 8 bits of mantissa (about 3 significant digits) instead of fp16's 11.

    Raises:
        ConfigError: an unknown name, or fp16 autocast (``16-mixed``) off CUDA, which the course does not run.
    """
    device = torch.device(device)
    plans = {
        "32-true": (torch.float32, None, False),
        "bf16-mixed": (torch.float32, torch.bfloat16, False),
        "bf16-true": (torch.bfloat16, None, False),
        "16-mixed": (torch.float32, torch.float16, True),
        "16-true": (torch.float16, None, False),
    }
    if precision not in plans:
        raise ConfigError(f"precision={precision!r} is not one of: {', '.join(plans)}")
    if precision == "16-mixed" and device.type != "cuda":
        raise ConfigError(f"precision=16-mixed needs a CUDA device (fp16 autocast + GradScaler); on {device.type} use "
                          "bf16-mixed or 32-true")  # fmt: skip
    return PrecisionPlan(precision, *plans[precision])


@dataclass
class LoopResult:
    """What :func:`train_loop` did, one entry per optimizer step.

    Attributes:
        steps: optimizer steps taken (GradScaler-skipped ones included: the schedule advanced).
        samples: training samples seen.
        losses: the loss of each optimizer step (mean over its micro-batches).
        grad_norms: the total L2 gradient norm of each step, before clipping.
        step_end_seconds: when each step ended, in seconds since the loop started.
        skipped_steps: steps the GradScaler skipped because a gradient was inf/NaN (fp16 only).
    """

    steps: int = 0
    samples: int = 0
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    step_end_seconds: list[float] = field(default_factory=list)
    skipped_steps: int = 0


def check_finite(what: str, value: float, step: int) -> None:
    """Raise :class:`~llm_course.errors.NonFiniteError` when ``value`` is NaN or ±inf, naming the step and causes."""
    if math.isfinite(value):
        return
    from llm_course.callbacks import LIKELY_CAUSES

    causes = "\n".join(f"  - {c}" for c in LIKELY_CAUSES)
    err = NonFiniteError(f"{what} is {value} at optimizer step {step}, before the optimizer touched the weights. "
                         f"Likely causes:\n{causes}")  # fmt: skip
    err.step = step
    raise err


def first_non_finite(net: nn.Module, *args: Any, **kwargs: Any) -> str | None:
    """Run ``net(*args, **kwargs)`` once and name the first submodule whose output holds a NaN or an inf.

    Forward hooks fire as each module finishes, innermost first, so the first name recorded is where the values
    went bad; ``None`` if every output was finite. ``""`` names ``net`` itself.
    """
    found: list[str] = []

    def hook(name: str):
        def check(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                outs = [output]
            else:  # a tuple, or a dict-like Hugging Face output
                outs = list(output.values()) if isinstance(output, Mapping) else list(output or [])
            if not found and any(isinstance(o, torch.Tensor) and not torch.isfinite(o).all() for o in outs):
                found.append(name)

        return check

    handles = [module.register_forward_hook(hook(name)) for name, module in net.named_modules()]
    try:
        with torch.no_grad():
            net(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def autocast(device: torch.device, plan: PrecisionPlan) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for a mixed plan, a no-op context otherwise."""
    if plan.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=plan.autocast_dtype)


def train_loop(
    net: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    device: torch.device | str = "cpu",
    precision: str = "32-true",
    accumulate_grad_batches: int = 1,
    gradient_clip_val: float | None = None,
    max_steps: int = -1,
    epochs: int = 1,
) -> LoopResult:
    """Train ``net`` (already on ``device``, in the plan's ``param_dtype``) on batches of a text classifier.

    Each micro-batch: forward under autocast, the loss in fp32, a finite-loss check, backward on loss / k. Every
    k-th micro-batch (and the last of an epoch, as Lightning does): unscale (fp16), clip, a finite-norm check, the
    optimizer step, zero the gradients, the schedule. Under DDP the gradient all-reduce is skipped on the first
    k - 1 micro-batches (``no_sync``): it would average gradients that are not complete yet.

    Args:
        net: a Hugging Face sequence classifier (``net(input_ids=, attention_mask=).logits``).
        loader: batches with ``input_ids``, ``attention_mask`` and ``labels``.
        optimizer: over ``net``'s trainable parameters.
        scheduler: stepped after every optimizer step (``WarmupDecayLR``); ``None``: a constant rate.
        device: where the batches go.
        precision: a Lightning precision name (see :func:`precision_plan`).
        accumulate_grad_batches: micro-batches per optimizer step (k).
        gradient_clip_val: clip the total L2 norm to this; ``None`` or 0: no clipping (the norm is still checked).
        max_steps: stop after this many optimizer steps (-1: run all ``epochs``).
        epochs: passes over ``loader``.

    Raises:
        NonFiniteError: the loss or the gradient norm stopped being finite; the weights are still the last good ones.
    """
    device = torch.device(device)
    plan = precision_plan(precision, device)
    # The scaler multiplies the loss by S (65536 to start) so that small fp16 gradients survive the backward pass,
    # divides the gradients by S again before the step, skips the step when a gradient overflowed to inf/NaN, and
    # adapts S (halved after an overflow, doubled after 2000 clean steps). Disabled, every call passes through.
    scaler = torch.amp.GradScaler(device.type, enabled=plan.grad_scaler)
    params = [p for p in net.parameters() if p.requires_grad]
    k = accumulate_grad_batches
    result, micro_losses = LoopResult(), []
    net.train()
    start = time.perf_counter()
    for epoch in range(epochs):
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)  # the course's samplers reshuffle per (seed, epoch)
        n_batches = len(loader) if hasattr(loader, "__len__") else None
        for i, batch in enumerate(loader):
            last_micro = (i + 1) % k == 0 or (n_batches is not None and i + 1 == n_batches)
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            with autocast(device, plan):  # matmuls in 16 bits; losses (and on CUDA softmax, norms) in fp32
                logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = F.cross_entropy(logits.float(), batch["labels"])  # the loss in fp32, outside autocast
            value = float(loss.detach())  # one host sync per micro-batch, as Lightning's NaN guard makes
            check_finite("The training loss", value, result.steps + 1)
            micro_losses.append(value)
            # DDP all-reduces gradients inside backward; on the first k - 1 micro-batches there is nothing to share.
            sync = contextlib.nullcontext() if last_micro or not hasattr(net, "no_sync") else net.no_sync()
            with sync:
                scaler.scale(loss / k).backward()  # / k: k micro-batches of b give the gradient of one batch of k·b
            result.samples += len(batch["labels"])
            if not last_micro:
                continue
            scaler.unscale_(optimizer)  # clip (and check) the true gradients, not the scaled ones
            if gradient_clip_val:  # scales every gradient by min(1, max_norm / norm); returns the norm before that
                norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            else:  # the same total L2 norm, gradients untouched
                norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            norm_value = float(norm)
            if not plan.grad_scaler:  # under the scaler an inf norm is its signal to skip this step, not a failure
                check_finite("The gradient norm", norm_value, result.steps + 1)
            scale = scaler.get_scale() if plan.grad_scaler else 1.0
            scaler.step(optimizer)  # optimizer.step(), unless the scaler found inf/NaN gradients
            scaler.update()
            if plan.grad_scaler and scaler.get_scale() < scale:
                result.skipped_steps += 1
            optimizer.zero_grad(set_to_none=True)  # frees the gradients' memory until the next backward
            if scheduler is not None:
                scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # so the step's end time is when the GPU finished it
            result.steps += 1
            result.losses.append(sum(micro_losses) / len(micro_losses))
            result.grad_norms.append(norm_value)
            result.step_end_seconds.append(time.perf_counter() - start)
            micro_losses = []
            if result.steps == max_steps:
                return result
    return result


@torch.no_grad()
def evaluate(net: nn.Module, loader: Iterable[dict[str, torch.Tensor]], metrics: Any, device: torch.device | str,
             precision: str = "32-true") -> dict[str, float]:  # fmt: skip
    """Validation loss (sample-weighted mean), accuracy and F1 of ``net`` over every batch of ``loader``.

    Args:
        net: the classifier.
        loader: validation batches.
        metrics: ``TextClassifier``'s ``val_metrics`` collection (F1 of the positive class with two labels, macro
            otherwise).
        device: where the batches go.
        precision: the training precision, so that evaluation runs the same arithmetic.
    """
    from llm_course.text.module import compute_metrics

    device = torch.device(device)
    plan = precision_plan(precision, device)
    net.eval()
    metrics = metrics.to(device)
    loss_sum, count = 0.0, 0
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        with autocast(device, plan):
            logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
        count += len(batch["labels"])
        metrics.update(logits, batch["labels"])
    values = compute_metrics(metrics)
    net.train()
    return {"val/loss": loss_sum / max(count, 1), **{key: float(v) for key, v in values.items()}}


def fit_plain(
    train_file: str,
    val_file: str | None = None,
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
    accumulate_grad_batches: int = 1,
    gradient_clip_val: float | None = 1.0,
    precision: Precision = "32-true",
    compile: bool = False,
    device: str = "auto",
    seed: int = 42,
    validate: bool = True,
    cache: str | None = None,
) -> dict[str, Any]:
    """Fine-tune Module 3's classifier with :func:`train_loop`, then score it once on the validation split.

    The seed is set the way ``llm-course fit`` sets it (``seed_everything``, before the network is built), so with
    the same settings both loops start from the same weights and see the same batches.

    Args:
        train_file: training texts and labels (``.jsonl[.gz]``, ``.csv``, ``.parquet``; ``text``/``label`` columns).
        val_file: validation file; default: ``val_fraction`` of ``train_file``, held out with ``seed``.
        model_name_or_path: a hub id, a local folder, or ``minilm`` (embedded).
        label_names: names of the label ids (``[neg, pos]`` for IMDb); default: from the data.
        max_length: tokens per text.
        truncation: ``head`` or ``head_tail`` (keep the start and the end of long texts).
        head_fraction: share of the budget taken from the start under ``head_tail``.
        val_fraction: share of ``train_file`` held out for validation when there is no ``val_file``.
        max_train_samples: train on a seeded subset of at most this many texts.
        batch_size: samples per micro-batch.
        eval_batch_size: validation batch size.
        group_by_length: batch texts of similar length together.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: share of the optimizer steps spent in linear warm-up (``WarmupDecayLR``).
        decay: learning-rate decay after the warm-up.
        dropout: every dropout probability of the model; ``None`` keeps the pretrained values.
        freeze_embeddings: keep the input token embeddings as pretrained (``TextClassifier``'s option).
        epochs: passes over the training data.
        max_steps: stop after this many optimizer steps (-1: run all ``epochs``).
        accumulate_grad_batches: micro-batches per optimizer step.
        gradient_clip_val: clip the total gradient norm to this (``None`` or 0: no clipping).
        precision: ``32-true``, ``bf16-mixed``, ``bf16-true``, ``16-mixed`` (CUDA) or ``16-true``.
        compile: apply ``torch.compile`` to the network (compiled at the first step, and again for new shapes).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available).
        seed: seeds the new head's weights, the validation split and the batch order.
        validate: score the validation split after training.
        cache: where tokenized splits are cached (default ``$LLM_COURSE_CACHE``).

    Returns:
        The run's numbers: steps, samples, per-step losses, gradient norms and end times, samples/s of the training
        loop alone, peak memory above the idle baseline (CUDA allocator, or the resident set on a CPU) and the
        validation metrics.

    Raises:
        NonFiniteError: the loss or the gradient norm stopped being finite.
    """
    import lightning as L

    from llm_course.text import TextClassificationDataModule, TextClassifier
    from llm_course.training import WarmupDecayLR, maybe_compile, planned_steps

    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    plan = precision_plan(precision, dev)
    L.seed_everything(seed, verbose=False)  # also sets PL_GLOBAL_SEED, which the course's samplers shuffle with
    dm = TextClassificationDataModule(
        model_name_or_path=model_name_or_path, train_file=train_file, val_file=val_file, label_names=label_names,
        val_fraction=val_fraction, max_train_samples=max_train_samples, max_length=max_length, truncation=truncation,
        head_fraction=head_fraction, batch_size=batch_size, eval_batch_size=eval_batch_size,
        group_by_length=group_by_length, seed=seed, cache=cache,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    baseline = current_mb(dev)  # data loaded, no network yet: the idle baseline memory is counted from
    classifier = TextClassifier(model_name_or_path, labels=dm.label_names, dropout=dropout,
                                freeze_embeddings=freeze_embeddings)  # fmt: skip
    net = classifier.net.to(dev, dtype=plan.param_dtype)  # *-true: the weights themselves in 16 bits
    maybe_compile(net, compile)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    loader = dm.train_dataloader()
    total_steps = planned_steps(len(loader), accumulate_grad_batches, epochs, max_steps)  # the steps that run
    scheduler = WarmupDecayLR(optimizer, total_steps=total_steps, warmup_ratio=warmup_ratio, decay=decay)
    reset_peak(dev)
    result = train_loop(net, loader, optimizer, scheduler, device=dev, precision=precision,
                        accumulate_grad_batches=accumulate_grad_batches, gradient_clip_val=gradient_clip_val,
                        max_steps=max_steps, epochs=epochs)  # fmt: skip
    peak = peak_mb(dev) - baseline
    seconds = result.step_end_seconds[-1] if result.step_end_seconds else 0.0
    val = evaluate(net, dm.val_dataloader(), classifier.val_metrics, dev, precision) if validate else {}
    return {
        "loop": "plain",
        "precision": precision,
        "compile": compile,
        "device": dev.type,
        "threads": torch.get_num_threads(),
        "steps": result.steps,
        "samples": result.samples,
        "train_seconds": round(seconds, 3),
        "samples_per_sec": round(result.samples / max(seconds, 1e-9), 3),
        "step_end_seconds": [round(t, 4) for t in result.step_end_seconds],
        "losses": [round(x, 6) for x in result.losses],
        "grad_norms": [round(x, 6) for x in result.grad_norms],
        "skipped_steps": result.skipped_steps,
        "peak_mem_mb": round(peak, 1),
        "memory": "cuda_max_allocated" if dev.type == "cuda" else "rss_above_idle",
        "val": val,
    }


def main(args: list[str] | None = None) -> None:
    """``python -m llm_course.optimization.plain_loop``: :func:`fit_plain`'s arguments as flags, result printed."""
    import json

    from jsonargparse import auto_cli

    result = auto_cli(fit_plain, args=args, as_positional=False)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}))


if __name__ == "__main__":
    main()
