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


LAUNCH = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE")


def launch_env_json(**env: str) -> dict:
    """``env --as_json=true`` in a fresh process whose launch variables are exactly ``env`` (none inherited)."""
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH and not k.startswith("NCCL_")}
    out = subprocess.run([sys.executable, "-m", "llm_course", "env", "--as_json=true"], capture_output=True,
                         text=True, timeout=120, env={**clean, **env})  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_env_reports_the_launch_environment_and_its_mistakes():
    import torch.distributed as dist

    report = launch_env_json(WORLD_SIZE="2", RANK="2", NCCL_DEBUG="INFO", NCCL_SOCKET_IFNAME="lo",
                             CUDA_VISIBLE_DEVICES="")  # fmt: skip
    launch = report["launch_env"]
    assert (launch["WORLD_SIZE"], launch["RANK"], launch["MASTER_ADDR"], launch["LOCAL_RANK"]) == ("2", "2", None, None)
    assert (launch["NCCL_DEBUG"], launch["NCCL_SOCKET_IFNAME"], launch["CUDA_VISIBLE_DEVICES"]) == ("INFO", "lo", "")
    assert report["distributed_backends"] == {
        "gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available(), "mpi": dist.is_mpi_available()
    }  # fmt: skip
    assert report["distributed_backends"]["gloo"] is True  # the CPU backend every Linux torch has
    # CUDA hidden: no GPUs, so no NCCL version and no GPU pairs to test.
    assert (report["gpu_count"], report["nccl_version"], report["gpu_peer_access"]) == (0, None, {})
    warnings = report["warnings"]
    assert any(w.startswith("WORLD_SIZE=2 is set but MASTER_ADDR and MASTER_PORT are not") for w in warnings)
    assert any(w.startswith("RANK=2 with WORLD_SIZE=2") for w in warnings)
    assert not any(w.startswith("LOCAL_RANK") for w in warnings)


def test_env_is_quiet_about_a_torchrun_environment():
    report = launch_env_json(MASTER_ADDR="127.0.0.1", MASTER_PORT="29500", WORLD_SIZE="4", RANK="3",
                             LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", NODE_RANK="1")  # fmt: skip
    assert report["warnings"] == []
    assert report["launch_env"]["NODE_RANK"] == "1" and report["launch_env"]["MASTER_PORT"] == "29500"
    assert not any(name.startswith("NCCL_") for name in report["launch_env"])  # none set, none listed


def test_launch_warnings_for_each_mistake():
    from llm_course.envinfo import launch_warnings

    def warned(environ: dict, gpus: int = 0, peers: dict | None = None, physical: int | None = 0) -> list[str]:
        return launch_warnings(environ, gpus, peers or {}, physical)

    assert warned({}) == []
    [only_port] = warned({"WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1"})
    assert only_port.startswith("WORLD_SIZE=2 is set but MASTER_PORT is not")
    assert warned({"LOCAL_RANK": "0"})[0].startswith("LOCAL_RANK=0 is set but RANK is not")
    assert warned({"WORLD_SIZE": "two", "MASTER_ADDR": "a", "MASTER_PORT": "1"}) == [
        "WORLD_SIZE='two' is not an integer; torch.distributed cannot start with it."
    ]
    torchrun = {"RANK": "2", "LOCAL_RANK": "2", "WORLD_SIZE": "4", "MASTER_ADDR": "a", "MASTER_PORT": "1"}
    assert warned(torchrun, gpus=2)[0].startswith("LOCAL_RANK=2 but this process sees 2 GPU(s)")
    assert warned(torchrun, gpus=4) == []
    # NCCL_P2P_DISABLE matters only where GPUs can reach each other directly.
    p2p = {"NCCL_P2P_DISABLE": "1"}
    assert warned(p2p, gpus=2, peers={"0->1": True, "1->0": True})[0].startswith("NCCL_P2P_DISABLE=1 on GPUs")
    assert warned(p2p, gpus=2, peers={"0->1": False, "1->0": False}) == []
    assert warned({"NCCL_P2P_DISABLE": "0"}, gpus=2, peers={"0->1": True}) == []
    # CUDA_VISIBLE_DEVICES: a mistake where the driver has GPUs to hide; unknowable driver: only "" / -1 are sure.
    assert warned({"CUDA_VISIBLE_DEVICES": ""}, physical=2)[0].startswith(
        "CUDA_VISIBLE_DEVICES='' hides all 2 GPU(s) of this machine"
    )
    assert warned({"CUDA_VISIBLE_DEVICES": "7"}, physical=2) != []  # an id that does not exist hides them too
    assert warned({"CUDA_VISIBLE_DEVICES": "0"}, gpus=1, physical=2) == []
    assert warned({"CUDA_VISIBLE_DEVICES": ""}, physical=0) == []  # a CPU-only machine: nothing hidden
    assert warned({"CUDA_VISIBLE_DEVICES": "-1"}, physical=None)[0].startswith("CUDA_VISIBLE_DEVICES='-1' hides every")
    assert warned({"CUDA_VISIBLE_DEVICES": "3"}, physical=None) == []


def test_env_table_prints_launch_variables_and_warnings(capsys, monkeypatch):
    for name in (*LAUNCH, "NCCL_P2P_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("NCCL_DEBUG", "WARN")
    run_cli("env")
    lines = capsys.readouterr().out.splitlines()
    assert any("NCCL_DEBUG" in line and "WARN" in line for line in lines)
    assert any("MASTER_ADDR" in line and "unset" in line for line in lines)
    assert any("distributed_backends" in line and "gloo yes" in line for line in lines)
    assert any(line.startswith("warning: WORLD_SIZE=2 is set but MASTER_ADDR") for line in lines)


def test_bench_linreg_matches_least_squares(tmp_path):
    run_cli("bench", "linreg", "--source=synthetic", "--max_epochs=15", f"--output_dir={tmp_path}")
    report = json.loads((tmp_path / "linreg.json").read_text())
    assert (tmp_path / "linreg.png").stat().st_size > 10_000
    assert report["test_samples"] == 100
    # noise_std = 0.1, so both fits should sit at an RMSE near 0.1, SGD within 15% of the exact optimum.
    assert 0.05 < report["exact_test_rmse"] < 0.15
    assert report["rmse_ratio"] < 1.15
    assert "versions" in report and "machine" in report and "command" in report
