"""Batched decoding on this machine, three ways, on the same prompts (greedy): plain ``model.generate`` on a
left-padded batch, transformers' continuous batching (``generate_batch``, ``attn_implementation="sdpa"``), and the
course's :class:`~llm_course.inference.batching.DecodeBatch` (what ``llm-course serve`` runs); then the course's batch
at 1..32 rows, to choose ``--max_batch_size``. notes/07 quotes the output.

    python scripts/compare_batching.py --prompts 16 --new_tokens 32 --output outputs/bench/batching.json
"""

import argparse
import json
import platform
import time

import torch

from llm_course.inference import GenerationEngine, SamplingParams
from llm_course.inference.batching import DecodeBatch
from llm_course.inference.bench import bench_prompts
from llm_course.inference.request import Generation


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def plain_generate(engine: GenerationEngine, prompts: list[list[int]], new_tokens: int) -> int:
    width = max(map(len, prompts))
    pad = engine.tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = engine.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)  # fmt: skip
    return out[:, width:].numel()


def course_batch(engine: GenerationEngine, prompts: list[list[int]], new_tokens: int) -> int:
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens)
    generations = [Generation(engine, p, params) for p in prompts]
    engine.eos_ids, eos = set(), engine.eos_ids  # every row decodes new_tokens, as min_new_tokens does above
    try:
        batch = DecodeBatch(engine)
        batch.add(generations)
        while batch.rows:
            batch.step()
    finally:
        engine.eos_ids = eos
    return sum(len(g.token_ids) for g in generations)


def decode_only(engine: GenerationEngine, prompts: list[list[int]], new_tokens: int) -> tuple[float, float, int]:
    """The course's batch with every row joined at once: (prefill seconds, decode seconds, decode steps)."""
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens)
    engine.eos_ids, eos = set(), engine.eos_ids
    try:
        batch = DecodeBatch(engine)
        prefill_s, _ = timed(lambda: batch.add([Generation(engine, p, params) for p in prompts]))
        start, steps = time.perf_counter(), 0
        while batch.rows:
            batch.step()
            steps += 1
    finally:
        engine.eos_ids = eos
    return prefill_s, time.perf_counter() - start, steps


def continuous_batching(engine: GenerationEngine, prompts: list[list[int]], new_tokens: int) -> int:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1,
                              pad_token_id=engine.tokenizer.pad_token_id)  # fmt: skip
    results = engine.model.generate_batch(prompts, generation_config=config, progress_bar=False,
                                          persistent_manager=True)  # fmt: skip
    return sum(len(r.generated_tokens) for r in results.values())


def cb_set_up(engine: GenerationEngine, prompts: list[list[int]], new_tokens: int) -> float:
    """Start the persistent manager with a first call (as a server would, once), so the timed calls measure
    decoding only; returns the seconds the set-up took."""
    seconds, _ = timed(lambda: continuous_batching(engine, prompts, new_tokens))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--sizes", default="1,4,8,16,32")
    parser.add_argument("--ways", default="plain,course,cb", help="which of plain, course, cb to run")
    parser.add_argument("--counts", default=None, help="prompt counts to run the ways at (default: 1,--prompts)")
    parser.add_argument("--only_sizes", action="store_true", help="only the course's batch at --sizes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = GenerationEngine.load(args.model, device="cpu")
    sizes = [int(n) for n in args.sizes.split(",") if n]
    prompts = [engine.prompt_ids(m) for m in bench_prompts(max([args.prompts, *sizes]))]
    results: dict[str, object] = {"model": args.model, "cpu": platform.processor() or platform.machine(),
                                  "threads": torch.get_num_threads(), "new_tokens": args.new_tokens,
                                  "attention": engine.model.config._attn_implementation}  # fmt: skip
    every = {"plain": ("plain generate (left-padded)", plain_generate), "course": ("course DecodeBatch", course_batch),
             "cb": ("transformers generate_batch (sdpa)", continuous_batching)}  # fmt: skip
    ways = dict(every[w] for w in args.ways.split(",") if w)
    counts = [int(n) for n in args.counts.split(",")] if args.counts else [1, args.prompts]
    with torch.inference_mode():
        course_batch(engine, prompts[:2], 2)  # warm-up
        if "cb" in args.ways.split(",") and not args.only_sizes:
            results["transformers generate_batch, first call (manager set-up), s"] = round(
                cb_set_up(engine, prompts[: args.prompts], args.new_tokens), 2)  # fmt: skip
        for n in () if args.only_sizes else counts:
            for name, run in ways.items():
                try:
                    seconds, tokens = timed(lambda run=run, n=n: run(engine, prompts[:n], args.new_tokens))
                except Exception as err:  # reported, not fatal: the other ways still run
                    results[f"{name}, {n} prompts, error"] = f"{type(err).__name__}: {err}"[:300]
                    print(f"{name:>36}, {n:>2} prompts: failed: {err}", flush=True)
                    continue
                results[f"{name}, {n} prompts, tokens/s"] = round(tokens / seconds, 2)
                print(f"{name:>36}, {n:>2} prompts: {tokens / seconds:7.1f} tokens/s ({seconds:.1f} s)", flush=True)
        for size in sizes:
            prefill_s, decode_s, steps = decode_only(engine, prompts[:size], args.new_tokens)
            results[f"course DecodeBatch, batch {size}, decode tokens/s"] = round(size * steps / decode_s, 2)
            results[f"course DecodeBatch, batch {size}, prefill s"] = round(prefill_s, 3)
            print(f"course DecodeBatch, batch {size:>2}: decode {size * steps / decode_s:7.1f} tokens/s "
                  f"({decode_s / steps * 1e3:.0f} ms a step), prefill {prefill_s:.2f} s", flush=True)  # fmt: skip
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
