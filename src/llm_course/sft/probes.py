"""Measurements that each run in a fresh process, so one setting's memory never leaks into another's numbers.

Memory is counted above the process's idle baseline (libraries imported, no model yet): the CUDA allocator
on a GPU, the resident set on a CPU (peak reset through ``/proc/self/clear_refs``).
"""

import math
import statistics
import time
from typing import Any

import torch

from llm_course.memory import current_mb, peak_mb, reset_peak

# How each training setting is configured: CausalLMFineTuner arguments + the Trainer precision it uses.
TRAIN_MODES: dict[str, dict[str, Any]] = {
    "full": {"module": {"finetune": "full"}, "precision": "32-true"},
    "lora_fp32": {"module": {"finetune": "lora"}, "precision": "32-true"},
    "lora": {"module": {"finetune": "lora", "dtype": "bfloat16"}, "precision": "bf16-mixed"},
    "qlora": {"module": {"finetune": "lora", "quantization": "nf4"}, "precision": "bf16-mixed"},
}
INFER_MODES: dict[str, dict[str, str]] = {
    "fp32": {"quantization": "none", "dtype": "float32"},
    "bf16": {"quantization": "none", "dtype": "bfloat16"},
    "fp16": {"quantization": "none", "dtype": "float16"},  # a GPU format: a CPU has no fp16 matrix units
    "int8": {"quantization": "int8", "dtype": "bfloat16"},
    "nf4": {"quantization": "nf4", "dtype": "bfloat16"},
}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _import_libraries() -> None:
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401


def train_probe(mode: str, model: str, batch_size: int, seq_len: int, steps: int, lora_r: int,
                gradient_checkpointing: bool = False, loss_chunk_size: int = 0) -> dict[str, Any]:  # fmt: skip
    """Peak training memory and step time of one setting: ``steps`` AdamW steps after one warmup step.

    The loop is the one Lightning runs for these precisions: forward under autocast (bf16-mixed) or not
    (32-true), backward, optimizer step, gradients freed. The loss is CausalLMFineTuner's (every token a label).
    """
    from llm_course.sft.lora import build_network
    from llm_course.sft.loss import causal_lm_loss

    _import_libraries()
    device = _device()
    baseline = current_mb(device)
    settings = TRAIN_MODES[mode]["module"]
    net = build_network(model, device=device, lora_r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                        gradient_checkpointing=gradient_checkpointing, **settings).to(device)  # fmt: skip
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    bf16 = TRAIN_MODES[mode]["precision"] == "bf16-mixed"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, net.config.vocab_size, (batch_size, seq_len), generator=g).to(device)
    model_mb = current_mb(device) - baseline
    reset_peak(device)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = causal_lm_loss(net, ids, None, ids, loss_chunk_size)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {
        "mode": mode,
        "precision": TRAIN_MODES[mode]["precision"],
        **{k: v for k, v in TRAIN_MODES[mode]["module"].items() if k != "finetune"},
        "finetune": TRAIN_MODES[mode]["module"]["finetune"],
        "trainable_params": sum(p.numel() for p in trainable),
        "total_params": sum(p.numel() for p in net.parameters()),
        "model_mb": round(model_mb, 1),
        "peak_train_mb": round(peak_mb(device) - baseline, 1),
        "step_seconds": round(statistics.median(times[1:]), 3),
        "final_loss": round(loss.item(), 4),
    }


class TokenClock:
    """A ``generate`` streamer that notes when each new token reaches the host.

    ``generate`` hands the streamer the prompt first (skipped), then every generated token as it is chosen;
    moving it to the host waits for the device, so the times are the tokens' real arrival times.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def timed_generate(net: Any, inputs: dict[str, torch.Tensor], max_new_tokens: int,
                   pad_token_id: int | None) -> tuple[torch.Tensor, float, float]:  # fmt: skip
    """Exactly ``max_new_tokens`` greedy tokens, timed apart: prefill and decode.

    Returns:
        The output ids, the time to first token (prompt processing + the first step, in seconds) and the decode
        speed: tokens after the first / seconds after the first (nan for a single token).
    """
    clock = TokenClock()
    start = time.perf_counter()
    out = net.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                       pad_token_id=pad_token_id, streamer=clock)  # fmt: skip
    first, last = clock.times[0], clock.times[-1]
    decode = (len(clock.times) - 1) / (last - first) if len(clock.times) > 1 and last > first else math.nan
    return out, first - start, decode


def inference_probe(mode: str, model: str, prompts: list[str], examples: list[dict[str, list[int]]],
                    max_new_tokens: int) -> dict[str, Any]:  # fmt: skip
    """Footprint, time to first token, decode speed, peak memory and response perplexity of one weight format.

    Each prompt is generated once (after one untimed warm-up generation); the time to first token covers the
    prompt's forward pass (prefill) and the first greedy step, the decode speed only the tokens after it.
    ``peak_mb``: the peak above the idle process while generating and scoring (CUDA max allocated on a GPU, the
    resident-set peak on a CPU), the loaded weights included.
    """
    from llm_course.sft.lora import load_causal_lm
    from llm_course.sft.prompts import IGNORE_INDEX, encode, load_tokenizer, prompt_text

    _import_libraries()
    device = _device()
    baseline = current_mb(device)
    net = load_causal_lm(model, INFER_MODES[mode]["quantization"], INFER_MODES[mode]["dtype"], device)
    if INFER_MODES[mode]["quantization"] == "none":
        net = net.to(device)  # bitsandbytes placed the quantized weights on the device already
    net.eval()
    loaded_mb = current_mb(device) - baseline
    reset_peak(device)  # from here: the weights plus what generation and scoring add (KV cache, activations)
    tokenizer = load_tokenizer(model)
    first_token, decode, answers, prompt_tokens = [], [], [], []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            ids = torch.tensor([encode(tokenizer, prompt_text(tokenizer, [{"role": "user", "content": prompt}]))])
            inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
            if i == 0:  # warm-up: first-call costs (kernel selection, allocations) stay out of the numbers
                timed_generate(net, inputs, 2, tokenizer.pad_token_id)
            out, ttft, tokens_per_second = timed_generate(net, inputs, max_new_tokens, tokenizer.pad_token_id)
            first_token.append(ttft)
            prompt_tokens.append(ids.shape[1])
            decode.append(tokens_per_second)
            answers.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
        loss_sum, tokens = 0.0, 0
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]], device=device)
            labels = torch.tensor([ex["labels"]], device=device)
            n = int((labels[:, 1:] != IGNORE_INDEX).sum())
            loss_sum += float(net(input_ids=ids, labels=labels).loss) * n
            tokens += n
    return {
        "mode": mode,
        **INFER_MODES[mode],
        "footprint_mb": round(net.get_memory_footprint() / 2**20, 1),
        "loaded_mb": round(loaded_mb, 1),
        "peak_mb": round(peak_mb(device) - baseline, 1),
        "memory": "cuda_max_allocated" if device.type == "cuda" else "rss_above_idle",
        "prompt_tokens": statistics.median(prompt_tokens),
        "time_to_first_token_s": round(statistics.median(first_token), 4),
        "decode_tokens_per_second": round(statistics.median(decode), 2),
        "response_loss": round(loss_sum / max(tokens, 1), 4),
        "perplexity": round(math.exp(loss_sum / max(tokens, 1)), 3),
        "eval_tokens": tokens,
        "sample_answer": answers[0],
    }


# glibc hands blocks >= 64 KiB back to the OS as soon as they are freed (its default threshold grows up to 32 MiB),
# so the resident-set peak follows the live tensors the way the CUDA allocator's peak does (notes/debug_log.md).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def in_fresh_process(fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` in a new interpreter (spawned, not forked, with ``CHILD_ENV``) and return its result."""
    import multiprocessing as mp
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, CHILD_ENV), mp.get_context("spawn").Pool(1) as pool:  # restored after
        return pool.apply(fn, args)


def run_modes(fn: Any, modes: list[str], args: tuple, partial_file: Any, fresh: bool = True
              ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """``fn(mode, *args)`` for each mode in its own process (``fresh=False``: all in this one, for smoke runs, where
    memory left by one mode counts in the next); each result is printed and saved as it arrives."""
    import json

    runs: dict[str, dict[str, Any]] = {}
    for mode in modes:
        runs[mode] = in_fresh_process(fn, mode, *args) if fresh else fn(mode, *args)
        print(json.dumps(runs[mode]), flush=True)
        partial_file.parent.mkdir(parents=True, exist_ok=True)
        partial_file.write_text(json.dumps(runs, indent=2) + "\n")  # a long run killed later keeps these
    return runs
