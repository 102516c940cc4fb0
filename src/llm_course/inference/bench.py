"""``llm-course bench serve``: the server under 1..32 concurrent streaming clients, batched and one reply at a time
(``--max_batch_size 1``), side by side in one run, against raw ``model.generate``."""

import asyncio
import gc
import json
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from llm_course.errors import ConfigError
from llm_course.inference.engine import GenerationEngine, Weights
from llm_course.inference.load_test import run_level
from llm_course.inference.request import ReplyStats
from llm_course.inference.sampling import SamplingParams
from llm_course.inference.scheduler import MAX_BATCH_SIZE
from llm_course.reports import write_report

BATCHED, ONE_AT_A_TIME = "batched", "one at a time"


def bench_prompts(n: int) -> list[list[dict[str, str]]]:
    """``n`` single-turn chats from Module 6's packaged instructions (repeated if ``n`` is larger)."""
    text = resources.files("llm_course.sft").joinpath("eval_instructions.jsonl").read_text()
    instructions = [json.loads(line)["instruction"] for line in text.splitlines() if line.strip()]
    return [[{"role": "user", "content": instructions[i % len(instructions)]}] for i in range(n)]


def raw_summary(stats: list[Any]) -> dict[str, Any]:
    decode = [s.decode_tokens_per_s for s in stats if s.decode_tokens_per_s]
    return {"requests": len(stats), "ttft_median_s": statistics.median(s.time_to_first_token_s for s in stats),
            "decode_tokens_per_s_median": statistics.median(decode),
            "completion_tokens": [s.completion_tokens for s in stats]}  # fmt: skip


def raw_generate(engine: GenerationEngine, messages: list[dict[str, str]], params: SamplingParams) -> ReplyStats:
    """One reply from plain ``model.generate`` (no engine loop, no server), timed per token by a streamer."""
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.prompt = True

        def put(self, value: torch.Tensor) -> None:
            if self.prompt:  # generate first puts the prompt
                self.prompt = False
            else:
                self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    ids = torch.tensor([engine.prompt_ids(messages)], device=engine.device)
    clock, start = Clock(), time.perf_counter()
    with torch.inference_mode():
        engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=clock,
                              pad_token_id=engine.tokenizer.pad_token_id, **params.generate_kwargs())  # fmt: skip
    t = clock.times
    return ReplyStats(prompt_tokens=ids.shape[1], completion_tokens=len(t), time_to_first_token_s=t[0] - start,
                      decode_tokens_per_s=(len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else None,
                      latency_s=time.perf_counter() - start)  # fmt: skip


def paired_overhead(engine: GenerationEngine, base: str, body: dict[str, Any],
                    prompts: list[list[dict[str, str]]]) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Each prompt raw (``model.generate`` in this process) then through the API (one client), alternately, so both
    share the machine's noise; greedy, so both produce the same tokens. Returns (raw summary, API summary)."""
    params = SamplingParams(temperature=0, max_new_tokens=body["max_tokens"])
    raw, api = [], []
    for messages in prompts:
        raw.append(raw_generate(engine, messages, params))
        api.append(asyncio.run(run_level(base, [body | {"messages": messages}], 1)))
    detail = [r for row in api for r in row["requests_detail"]]
    decode = [r["decode_tokens_per_s"] for r in detail if r["decode_tokens_per_s"]]
    ttft = [r["ttft_s"] for r in detail if r["ttft_s"] is not None]
    through_api = {"requests": len(detail), "errors": sum(r["error"] is not None for r in detail),
                   "ttft_median_s": statistics.median(ttft), "decode_tokens_per_s_median": statistics.median(decode),
                   "completion_tokens": [r["completion_tokens"] for r in detail]}  # fmt: skip
    return raw_summary(raw), through_api


def start_server(model: str, weights: str, device: str, port: int, queue_size: int,
                 max_batch_size: int) -> subprocess.Popen:  # fmt: skip
    command = [sys.executable, "-m", "llm_course", "serve", "--model", model, "--weights", weights, "--device", device,
               "--port", str(port), "--ui", "false", "--queue_size", str(queue_size),
               "--max_batch_size", str(max_batch_size)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(url: str, process: subprocess.Popen | None, timeout_s: float = 600) -> str:
    """Wait for ``/health``; return the first served model id."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=2).json()["models"][0]
        except (httpx.HTTPError, KeyError, ValueError):
            time.sleep(0.5)
    raise TimeoutError(f"no answer from {url}/health within {timeout_s:.0f} s")


def bench_serve(
    output_dir: str = "outputs/bench",
    model: str = "smollm2-135m-instruct",
    weights: Weights = "fp32",
    device: str = "cpu",
    url: str | None = None,
    port: int = 8765,
    clients: list[int] | None = None,
    min_requests: int = 8,
    paired_requests: int = 16,
    max_tokens: int = 64,
    max_batch_size: int = MAX_BATCH_SIZE,
    one_at_a_time: bool = True,
) -> dict[str, str]:
    """Serving overhead (raw ``model.generate`` and one API client on the same prompts, alternately; greedy, so both
    produce the same tokens), then requests/s, aggregate decode tokens/s, first token p50/p95, per-stream decode
    tokens/s and errors at 1, 4, 16 and 32 concurrent streaming clients (same prompts and max_tokens at every level):
    the batched server and, side by side (the two alternate level by level), one started with ``--max_batch_size 1``.

    Targets: aggregate tokens/s at 16 clients >= 4x that at 1 client; first token p50 at 16 clients <= 3 s; API
    decode tokens/s at 1 client >= 0.95x raw generate; first token <= 0.5 s at 1 client; 0 errors at 32 clients.

    Args:
        output_dir: where ``serve.json`` and ``serve.png`` go.
        model: the model to serve (started here with ``llm-course serve --ui false``) unless ``url`` is given.
        weights: fp32, bf16, int8 or nf4.
        device: cpu, cuda or auto.
        url: an already running server (e.g. http://127.0.0.1:8000; no one-at-a-time run then); raw generate still
            loads ``model`` here.
        port: port for the batched server this benchmark starts (the one-at-a-time server gets the next one).
        clients: concurrency levels (default 1, 4, 16, 32).
        min_requests: requests per level at least (each level sends max(clients, min_requests)).
        paired_requests: prompts for the overhead measurement (each raw, then through the API).
        max_tokens: tokens per reply.
        max_batch_size: the batched server's --max_batch_size.
        one_at_a_time: also start a --max_batch_size 1 server, the "before" of the comparison.
    """
    levels = clients or [1, 4, 16, 32]
    if min(levels) < 1 or min_requests < 1 or max_tokens < 2 or max_batch_size < 1:
        raise ConfigError(f"clients={levels}, min_requests={min_requests}, max_tokens={max_tokens}, max_batch_size="
                          f"{max_batch_size}: need >=1, >=1, >=2, >=1")  # fmt: skip
    engine = GenerationEngine.load(model, weights=weights, device=device)
    engine.warm_up()
    sizes = {BATCHED: max_batch_size} | ({ONE_AT_A_TIME: 1} if one_at_a_time and url is None else {})
    queue = max(levels) + 8
    processes = {} if url else {name: start_server(model, weights, device, port + i, queue, size)
                                for i, (name, size) in enumerate(sizes.items())}  # fmt: skip
    bases = {name: url or f"http://127.0.0.1:{port + i}" for i, name in enumerate(sizes)}
    try:
        served = [wait_ready(bases[name], processes.get(name)) for name in sizes][0]
        body = {"model": served, "temperature": 0, "max_tokens": max_tokens}
        for base in bases.values():
            asyncio.run(run_level(base, [body | {"messages": bench_prompts(1)[0]}], 1))  # warm-up, not counted
        raw, api = paired_overhead(engine, bases[BATCHED], body, bench_prompts(paired_requests))
        for name, row in (("raw generate", raw), ("API, 1 client", api)):
            speed, first = row["decode_tokens_per_s_median"], row["ttft_median_s"]
            print(f"{name}: {speed:.1f} tokens/s, first token {first:.3f} s", file=sys.stderr)
        del engine
        gc.collect()
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in sizes}
        for k, n in enumerate(levels):
            bodies = [body | {"messages": m} for m in bench_prompts(max(n, min_requests))]
            for name in list(sizes)[:: 1 if k % 2 == 0 else -1]:  # alternate which goes first
                rows[name].append(row := asyncio.run(run_level(bases[name], bodies, n)))
                print(f"{name:>13}, {n:>3} clients: {row['requests_per_s']:.2f} req/s, "
                      f"{row['completion_tokens_per_s_total']:.1f} tokens/s in all, first token p50 "
                      f"{row['ttft_p50_s']:.3f} s p95 {row['ttft_p95_s']:.3f} s, errors {row['errors']}",
                      file=sys.stderr)  # fmt: skip
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(60)
    targets = serve_targets(raw, api, rows[BATCHED])
    results = {"model": served, "weights": weights, "device": device, "max_tokens": max_tokens,
               "max_batch_size": max_batch_size, "raw_generate": raw, "api_one_client": api, "levels": rows[BATCHED],
               "levels_one_at_a_time": rows.get(ONE_AT_A_TIME), "targets": targets}  # fmt: skip
    path = write_report(output_dir, "serve", results, serve_figure(results))
    print(json.dumps(targets, indent=2))
    return {"json": str(path), "png": str(Path(output_dir) / "serve.png")}


def serve_targets(raw: dict[str, Any], api: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets for the batched server; those whose level was not measured are ``None``, not checked."""
    by_clients = {r["clients"]: r for r in rows}
    ratio = api["decode_tokens_per_s_median"] / raw["decode_tokens_per_s_median"]
    most = max(rows, key=lambda r: r["clients"])
    scaling = ttft16 = None
    if 1 in by_clients and 16 in by_clients:
        scaling = by_clients[16]["completion_tokens_per_s_total"] / by_clients[1]["completion_tokens_per_s_total"]
        ttft16 = by_clients[16]["ttft_p50_s"]
    checks = [ratio >= 0.95, api["ttft_median_s"] <= 0.5, most["errors"] == 0, api["errors"] == 0]
    checks += [] if scaling is None else [scaling >= 4, ttft16 is not None and ttft16 <= 3]
    return {
        "api_over_raw_decode_tokens_per_s": round(ratio, 4), "api_over_raw_target": 0.95,
        "ttft_median_s_at_1_client": api["ttft_median_s"], "ttft_target_s": 0.5,
        "tokens_per_s_16_over_1_client": None if scaling is None else round(scaling, 3), "scaling_target": 4.0,
        "ttft_p50_s_at_16_clients": ttft16, "ttft_p50_at_16_target_s": 3.0,
        f"errors_at_{most['clients']}_clients": most["errors"],
        "met": all(checks),
    }  # fmt: skip


def serve_figure(results: dict[str, Any]) -> Any:
    """Three panels against the number of clients, batched and one at a time: aggregate tokens/s, time to first
    token p50/p95, decode tokens/s of each stream."""
    from llm_course.plotting import subplots

    runs = [(f"batched (max_batch_size {results['max_batch_size']})", results["levels"], "C0")]
    if results.get("levels_one_at_a_time"):
        runs.append(("one at a time (max_batch_size 1)", results["levels_one_at_a_time"], "C3"))
    raw = results["raw_generate"]
    fig, (a, b, c) = subplots(1, 3, figsize=(15, 4.2))
    for label, rows, color in runs:
        n = [r["clients"] for r in rows]
        a.plot(n, [r["completion_tokens_per_s_total"] for r in rows], "o-", color=color, label=label)
        b.plot(n, [r["ttft_p50_s"] for r in rows], "o-", color=color, label=f"{label}, p50")
        b.plot(n, [r["ttft_p95_s"] for r in rows], "s--", color=color, label=f"{label}, p95")
        c.plot(n, [r["decode_tokens_per_s_median"] for r in rows], "o-", color=color, label=label)
    a.axhline(raw["decode_tokens_per_s_median"], color="grey", lw=1, label="raw generate, 1 prompt")
    a.set(xscale="log", xlabel="concurrent clients", ylabel="tokens/s, all streams", title="throughput", ylim=(0, None))
    b.axhline(raw["ttft_median_s"], color="grey", lw=1, label="raw generate")
    b.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="seconds", title="time to first token")
    c.axhline(raw["decode_tokens_per_s_median"], color="grey", lw=1, label="raw generate")
    c.set(xscale="log", xlabel="concurrent clients", ylabel="tokens/s", title="decode speed of each stream (median)",
          ylim=(0, None))  # fmt: skip
    n = [r["clients"] for r in results["levels"]]
    for ax in (a, b, c):
        ax.minorticks_off()
        ax.set_xticks(n, [str(k) for k in n])
        ax.legend(fontsize=7)
    where = f"{results['model']} on {results['device']}, {results['max_tokens']} tokens per reply"
    fig.suptitle(f"llm-course serve: {where}")
    fig.tight_layout()
    return fig
