"""``scripts/gpu_check.sh --dry_run``: every step of the GPU evidence kit, on the CPU, on tiny models built by it."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_report(tmp_path):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTHON": sys.executable, "LLM_COURSE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry_run", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["mode"] == "dry_run" and list(summary["steps"]) == [
        "env", "precision", "quant-inference", "lora-memory", "serve"]  # fmt: skip
    assert all(step["status"] == "ok" for step in summary["steps"].values()), summary

    env_report = json.loads((out / "env.json").read_text())
    assert env_report["cuda_available"] is False and "torch" in env_report["versions"]

    precision = json.loads((out / "precision.json").read_text())
    rows = precision["rows"]
    assert list(rows) == ["lightning 32-true", "lightning 16-mixed", "plain 32-true"]
    assert rows["lightning 32-true"]["status"] == rows["plain 32-true"]["status"] == "ok"
    assert rows["lightning 32-true"]["samples_per_sec"] > 0 and rows["lightning 32-true"]["peak_mem_mb"] > 0
    assert rows["lightning 16-mixed"]["status"] == "skipped" and "CUDA" in rows["lightning 16-mixed"]["reason"]
    assert precision["hardware"]["device"] == "cpu"

    quant_report = json.loads((out / "quant-inference.json").read_text())
    quant = quant_report["runs"]
    assert list(quant) == ["fp16", "int8", "nf4"] and quant["fp16"]["dtype"] == "float16"
    assert quant_report["settings"]["fresh_process"] is False  # the dry run's shortcut, said in the JSON
    for mode, run in quant.items():
        assert run["time_to_first_token_s"] > 0 and run["decode_tokens_per_second"] > 0, mode
        assert isinstance(run["peak_mb"], float) and run["memory"] == "rss_above_idle", mode
    assert quant["nf4"]["footprint_mb"] < quant["fp16"]["footprint_mb"]
    for run in quant.values():  # the tiny model's output layer is zero: all 258 byte-level tokens equally likely
        assert run["perplexity"] == pytest.approx(258, rel=1e-3)

    lora = json.loads((out / "lora-memory.json").read_text())
    assert set(lora["runs"]) == {"full", "lora_fp32", "lora", "qlora"} and "lora_vs_full" in lora
    assert all(isinstance(run["peak_train_mb"], float) and run["step_seconds"] > 0 for run in lora["runs"].values())
    assert lora["runs"]["full"]["trainable_params"] > lora["runs"]["qlora"]["trainable_params"] > 0

    serve = json.loads((out / "serve.json").read_text())
    assert [level["clients"] for level in serve["levels"]] == [1, 16] and serve["device"] == "cpu"
    levels = [(level["clients"], level["requests"], level["errors"]) for level in serve["levels"]]
    assert levels == [(1, 2, 0), (16, 16, 0)]  # each level sends max(clients, --min_requests 2) requests
    assert serve["api_one_client"]["errors"] == 0 and serve["raw_generate"]["completion_tokens"] == [4, 4]

    for figure in ("precision", "quant-inference", "lora-memory", "serve"):
        assert (out / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
