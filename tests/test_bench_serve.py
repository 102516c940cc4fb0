"""Module 7: ``bench serve`` end to end on a tiny model (a real server process, real concurrent streaming clients)."""

import json

from llm_course.inference.bench import bench_serve
from llm_course.inference.load_test import RequestResult, percentile, summarize


def test_bench_serve_measures_batched_and_one_at_a_time_against_raw_generate(constant_llama, tmp_path):
    from helpers.serving import free_port

    out = bench_serve(str(tmp_path), model=constant_llama, device="cpu", port=free_port(), clients=[1, 3],
                      min_requests=4, paired_requests=3, max_tokens=6, max_batch_size=4)  # fmt: skip
    report = json.loads((tmp_path / "serve.json").read_text())
    assert out["json"] == str(tmp_path / "serve.json") and (tmp_path / "serve.png").stat().st_size > 10_000
    assert report["raw_generate"]["completion_tokens"] == [6, 6, 6]  # the constant model never stops early
    assert report["api_one_client"]["completion_tokens"] == [6, 6, 6] and report["api_one_client"]["errors"] == 0
    assert report["max_batch_size"] == 4
    for rows in (report["levels"], report["levels_one_at_a_time"]):
        assert [row["clients"] for row in rows] == [1, 3]
        for row in rows:
            assert row["requests"] == 4 and row["errors"] == 0
            assert all(r["completion_tokens"] == 6 for r in row["requests_detail"])
            assert 0 < row["ttft_p50_s"] <= row["ttft_p95_s"] <= row["latency_p95_s"]
            assert row["requests_per_s"] > 0 and row["decode_tokens_per_s_median"] > 0
            assert row["completion_tokens_per_s_total"] > 0
    targets = report["targets"]
    api, raw = report["api_one_client"], report["raw_generate"]
    ratio = api["decode_tokens_per_s_median"] / raw["decode_tokens_per_s_median"]
    assert abs(targets["api_over_raw_decode_tokens_per_s"] - ratio) < 1e-3 and "errors_at_3_clients" in targets
    assert targets["tokens_per_s_16_over_1_client"] is None  # 16 clients were not measured: not a target here


def test_summary_counts_errors_and_percentiles():
    results = [RequestResult(200, ttft_s=t, latency_s=1.0, completion_tokens=10, decode_tokens_per_s=20.0)
               for t in (0.1, 0.2, 0.3, 0.4)] + [RequestResult(429, latency_s=0.01, error="busy")]  # fmt: skip
    summary = summarize(results, wall_s=2.0, clients=5)
    assert summary["errors"] == 1 and summary["error_samples"] == ["busy"]
    assert summary["requests_per_s"] == 2.0 and summary["completion_tokens_per_s_total"] == 20.0
    assert summary["ttft_p50_s"] in (0.2, 0.3) and summary["ttft_p95_s"] == 0.4
    assert percentile([], 0.5) is None
