"""``llm-course env`` and ``llm-course bench linreg``."""

import json

import torch

from conftest import run_cli


def test_env_reports_versions_devices_memory_and_seed(capsys):
    run_cli("env", "--as_json=true")
    report = json.loads(capsys.readouterr().out)
    assert report["versions"]["torch"] == torch.__version__
    assert report["cuda_available"] == torch.cuda.is_available()
    assert report["cpu_count"] >= 1 and report["memory_total_gb"] > 0
    assert report["seed"] == 42
    assert set(report["versions"]) >= {"lightning", "transformers", "peft", "bitsandbytes"}


def test_env_table(capsys):
    run_cli("env")
    out = capsys.readouterr().out
    assert "lightning" in out and "torch_threads" in out


def test_bench_linreg_matches_least_squares(tmp_path):
    run_cli("bench", "linreg", "--source=synthetic", "--max_epochs=15", f"--output_dir={tmp_path}")
    report = json.loads((tmp_path / "linreg.json").read_text())
    assert (tmp_path / "linreg.png").stat().st_size > 10_000
    assert report["test_samples"] == 100
    # noise_std = 0.1, so both fits should sit at an RMSE near 0.1, SGD within 15% of the exact optimum.
    assert 0.05 < report["exact_test_rmse"] < 0.15
    assert report["rmse_ratio"] < 1.15
    assert "versions" in report and "machine" in report and "command" in report
