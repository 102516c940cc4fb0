"""``llm-course bench serve``: the server under 1..32 concurrent streaming clients, against raw ``generate``."""

import asyncio
import json
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from llm_course.errors import ConfigError
from llm_course.inference.engine import GenerationEngine, Weights
from llm_course.inference.load_test import run_level
from llm_course.inference.sampling import SamplingParams
from llm_course.reports import write_report


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


def paired_overhead(engine: GenerationEngine, base: str, body: dict[str, Any],
                    prompts: list[list[dict[str, str]]]) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Each prompt raw (the engine in this process) then through the API (one client), alternately, so both share
    the machine's noise; greedy, so both produce the same tokens. Returns (raw summary, API summary)."""
    params = SamplingParams(temperature=0, max_new_tokens=body["max_tokens"])
    raw, api = [], []
    for messages in prompts:
        raw.append(engine.generate(messages, params)[1])
        api.append(asyncio.run(run_level(base, [body | {"messages": messages}], 1)))
    detail = [r for row in api for r in row["requests_detail"]]
    decode = [r["decode_tokens_per_s"] for r in detail if r["decode_tokens_per_s"]]
    ttft = [r["ttft_s"] for r in detail if r["ttft_s"] is not None]
    through_api = {"requests": len(detail), "errors": sum(r["error"] is not None for r in detail),
                   "ttft_median_s": statistics.median(ttft), "decode_tokens_per_s_median": statistics.median(decode),
                   "completion_tokens": [r["completion_tokens"] for r in detail]}  # fmt: skip
    return raw_summary(raw), through_api


def start_server(model: str, weights: str, device: str, port: int, queue_size: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "llm_course", "serve", "--model", model, "--weights", weights, "--device", device,
               "--port", str(port), "--ui", "false", "--queue_size", str(queue_size)]  # fmt: skip
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
) -> dict[str, str]:
    """Serving overhead (raw ``generate`` and one API client on the same prompts, alternately; greedy, so both
    produce the same tokens), then requests/s, time to first token p50/p95, decode tokens/s and errors at 1, 4,
    16 and 32 concurrent streaming clients.

    Targets: API decode tokens/s at 1 client >= 0.95x raw generate; time to first token <= 0.5 s at 1 client;
    0 errors at 32 clients.

    Args:
        output_dir: where ``serve.json`` and ``serve.png`` go.
        model: the model to serve (started here with ``llm-course serve --ui false``) unless ``url`` is given.
        weights: fp32, bf16, int8 or nf4.
        device: cpu, cuda or auto.
        url: an already running server (e.g. http://127.0.0.1:8000); raw generate still loads ``model`` here.
        port: port for the server this benchmark starts.
        clients: concurrency levels (default 1, 4, 16, 32).
        min_requests: requests per level at least (each level sends max(clients, min_requests)).
        paired_requests: prompts for the overhead measurement (each raw, then through the API).
        max_tokens: tokens per reply.
    """
    levels = clients or [1, 4, 16, 32]
    if min(levels) < 1 or min_requests < 1 or max_tokens < 2:
        raise ConfigError(f"clients={levels}, min_requests={min_requests}, max_tokens={max_tokens}: need >=1, >=1, >=2")
    engine = GenerationEngine.load(model, weights=weights, device=device)
    engine.warm_up()
    process = None if url else start_server(model, weights, device, port, queue_size=max(levels) + 8)
    base = url or f"http://127.0.0.1:{port}"
    try:
        served = wait_ready(base, process)
        body = {"model": served, "temperature": 0, "max_tokens": max_tokens}
        asyncio.run(run_level(base, [body | {"messages": bench_prompts(1)[0]}], 1))  # warm-up, not counted
        raw, api = paired_overhead(engine, base, body, bench_prompts(paired_requests))
        for name, row in (("raw generate", raw), ("API, 1 client", api)):
            speed, first = row["decode_tokens_per_s_median"], row["ttft_median_s"]
            print(f"{name}: {speed:.1f} tokens/s, first token {first:.3f} s", file=sys.stderr)
        del engine
        rows = []
        for n in levels:
            bodies = [body | {"messages": m} for m in bench_prompts(max(n, min_requests))]
            rows.append(asyncio.run(run_level(base, bodies, n)))
            row = rows[-1]
            print(f"{n:>3} clients: {row['requests_per_s']:.2f} req/s, first token p50 {row['ttft_p50_s']:.3f} s "
                  f"p95 {row['ttft_p95_s']:.3f} s, errors {row['errors']}", file=sys.stderr)  # fmt: skip
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
    ratio = api["decode_tokens_per_s_median"] / raw["decode_tokens_per_s_median"]
    most = max(rows, key=lambda r: r["clients"])
    targets = {
        "api_over_raw_decode_tokens_per_s": round(ratio, 4), "api_over_raw_target": 0.95,
        "ttft_median_s_at_1_client": api["ttft_median_s"], "ttft_target_s": 0.5,
        f"errors_at_{most['clients']}_clients": most["errors"],
        "met": ratio >= 0.95 and api["ttft_median_s"] <= 0.5 and most["errors"] == 0 and api["errors"] == 0,
    }  # fmt: skip
    results = {"model": served, "weights": weights, "device": device, "max_tokens": max_tokens, "raw_generate": raw,
               "api_one_client": api, "levels": rows, "targets": targets}  # fmt: skip
    path = write_report(output_dir, "serve", results, serve_figure(results))
    print(json.dumps(targets, indent=2))
    return {"json": str(path), "png": str(Path(output_dir) / "serve.png")}


def serve_figure(results: dict[str, Any]) -> Any:
    """Three panels against the number of clients: requests/s, time to first token p50/p95, decode tokens/s."""
    from llm_course.plotting import subplots

    rows, raw = results["levels"], results["raw_generate"]
    n = [r["clients"] for r in rows]
    fig, (a, b, c) = subplots(1, 3, figsize=(14, 4))
    a.plot(n, [r["requests_per_s"] for r in rows], "o-")
    a.set(xscale="log", xlabel="concurrent clients", ylabel="requests/s", title="throughput", ylim=(0, None))
    b.plot(n, [r["ttft_p50_s"] for r in rows], "o-", label="p50")
    b.plot(n, [r["ttft_p95_s"] for r in rows], "s--", label="p95")
    b.axhline(raw["ttft_median_s"], color="grey", lw=1, label="raw generate")
    b.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="seconds", title="time to first token")
    b.legend()
    c.plot(n, [r["decode_tokens_per_s_median"] for r in rows], "o-", label="through the API (median per request)")
    c.axhline(raw["decode_tokens_per_s_median"], color="grey", lw=1, label="raw generate")
    c.set(xscale="log", xlabel="concurrent clients", ylabel="tokens/s", title="decode speed per reply", ylim=(0, None))
    c.legend()
    for ax in (a, b, c):
        ax.set_xticks(n, [str(k) for k in n])
    where = f"{results['model']} on {results['device']}, {results['max_tokens']} tokens per reply"
    fig.suptitle(f"llm-course serve: {where}")
    fig.tight_layout()
    return fig
