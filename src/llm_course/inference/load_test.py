"""A load generator for an OpenAI-compatible server: N concurrent streaming clients, timed from the client side.

Each client sends its requests one after another with ``stream: true`` (and ``stream_options.include_usage``) and
times the first content chunk (time to first token as the user sees it), the last one, and the token count the server
reports in its usage chunk.
"""

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class RequestResult:
    status: int
    ttft_s: float | None = None
    latency_s: float = 0.0
    completion_tokens: int = 0
    decode_tokens_per_s: float | None = None  # (tokens - 1) / (last chunk - first chunk), seen by the client
    server_decode_tokens_per_s: float | None = None  # what the engine measured (the ``timings`` extension)
    error: str | None = None


async def stream_request(client: Any, url: str, body: dict[str, Any]) -> RequestResult:
    """One streaming chat completion; any HTTP error or broken stream is recorded, not raised."""
    start = time.perf_counter()
    first = last = None
    usage: dict[str, int] = {}
    timings: dict[str, Any] = {}
    try:
        body = body | {"stream": True, "stream_options": {"include_usage": True}}
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return RequestResult(response.status_code, latency_s=time.perf_counter() - start, error=text[:300])
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    return RequestResult(200, latency_s=time.perf_counter() - start, error=chunk["error"]["message"])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    last = time.perf_counter()
                    first = first or last
                usage = chunk.get("usage") or usage
                timings = chunk.get("timings") or timings
    except Exception as err:  # a dropped connection or a timeout counts as an error of this request
        return RequestResult(0, latency_s=time.perf_counter() - start, error=f"{type(err).__name__}: {err}")
    tokens = usage.get("completion_tokens", 0)
    result = RequestResult(200, latency_s=time.perf_counter() - start, completion_tokens=tokens,
                           server_decode_tokens_per_s=timings.get("decode_tokens_per_s"))  # fmt: skip
    if not done:
        result.error = "the stream ended without [DONE]"
    if first is not None:
        result.ttft_s = first - start
        if last > first and result.completion_tokens > 1:
            result.decode_tokens_per_s = (result.completion_tokens - 1) / (last - first)
    return result


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(results: list[RequestResult], wall_s: float, clients: int) -> dict[str, Any]:
    ok = [r for r in results if r.error is None]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    decode = [r.decode_tokens_per_s for r in ok if r.decode_tokens_per_s is not None]
    server = [r.server_decode_tokens_per_s for r in ok if r.server_decode_tokens_per_s is not None]
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_samples": sorted({r.error for r in results if r.error})[:3],
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(ok) / wall_s, 4),
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p95_s": percentile(ttft, 0.95),
        "decode_tokens_per_s_median": statistics.median(decode) if decode else None,
        "server_decode_tokens_per_s_median": statistics.median(server) if server else None,
        "completion_tokens_per_s_total": round(sum(r.completion_tokens for r in ok) / wall_s, 3),
        "latency_p50_s": percentile([r.latency_s for r in ok], 0.5),
        "latency_p95_s": percentile([r.latency_s for r in ok], 0.95),
    }


async def run_level(url: str, bodies: list[dict[str, Any]], clients: int, timeout_s: float = 900,
                    api_key: str | None = None) -> dict[str, Any]:  # fmt: skip
    """``clients`` concurrent clients share ``bodies`` round-robin, each sending its share one after another.
    ``completion_tokens_per_s_total`` is the aggregate decode rate: every reply's tokens over the wall time."""
    import httpx

    shares = [bodies[i::clients] for i in range(clients)]

    async def client_loop(client: Any, share: list[dict[str, Any]]) -> list[RequestResult]:
        return [await stream_request(client, url, body) for body in share]

    limits = httpx.Limits(max_connections=clients + 4)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:
        start = time.perf_counter()
        per_client = await asyncio.gather(*(client_loop(client, share) for share in shares))
        wall = time.perf_counter() - start
    results = [r for share in per_client for r in share]
    summary = summarize(results, wall, clients)
    summary["requests_detail"] = [asdict(r) for r in results]
    return summary
