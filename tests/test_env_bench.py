"""``llm-course env`` and ``llm-course bench linreg``."""

import json
import os
import subprocess
import sys
from importlib import metadata

from conftest import run_cli


def env_json(**env: str) -> dict:
    """``llm-course env --as_json=true`` in a fresh process with ``env`` added to the environment."""
    out = subprocess.run([sys.executable, "-m", "llm_course", "env", "--as_json=true"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, **env})  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_env_reports_what_the_process_was_given():
    report = env_json(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PL_GLOBAL_SEED="7")
    assert report["versions"]["torch"] == metadata.version("torch").split("+")[0] or report["versions"][
        "torch"
    ].startswith(metadata.version("torch"))
    assert report["versions"]["lightning"] == metadata.version("lightning")
    assert report["cuda_available"] is False and report["devices"] == ["cpu"]  # CUDA hidden from this process
    assert report["torch_threads"] == 1
    assert (report["seed"], report["seed_source"]) == (7, "PL_GLOBAL_SEED")
    mem_kib = int(next(x for x in open("/proc/meminfo") if x.startswith("MemTotal")).split()[1])
    assert report["memory_total_gb"] == round(mem_kib / 2**20, 1)
    assert report["cpu_count"] == os.cpu_count()


def test_env_without_a_seed_says_the_cli_default():
    env = {k: v for k, v in os.environ.items() if k != "PL_GLOBAL_SEED"}
    out = subprocess.run([sys.executable, "-m", "llm_course", "env", "--as_json=true"], capture_output=True,
                         text=True, timeout=120, env=env)  # fmt: skip
    report = json.loads(out.stdout)
    assert report["seed"] == 42 and report["seed_source"].startswith("CLI default")


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
