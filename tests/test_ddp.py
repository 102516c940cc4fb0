"""Module 5: every task and every stage under DDP on 2 CPU processes (gloo), as real ``llm-course`` commands.

Each command runs in a subprocess with a timeout, so a hang fails the test instead of stalling CI. Checked: files
are written once (one run directory per command, by rank 0), all ranks hold the same weights after ``fit``, test
metrics count every sample exactly once and equal the one-process run on the same checkpoint, and predictions come
back one per input, in input order.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONFIGS, ROOT

# fp32, so that the 1- and 2-process results can be compared exactly (auto could pick bf16 on an AMX CPU)
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.precision=32-true"]
ONE = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]
TIMEOUT = 400


def llm_course(*args: str, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """``python -m llm_course ARGS`` in a fresh process (Lightning launches the second rank from it)."""
    return run_python("-m", "llm_course", *args, timeout=timeout)


def run_python(*args, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh process, with the test helpers importable and a timeout that fails the test."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    try:
        proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=ROOT)  # fmt: skip
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"python {' '.join(map(str, args[:4]))} hung for {timeout} s:\n{(err.stderr or b'')[-2000:]}")
    return proc


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def callback(class_name: str, **init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"helpers.ddp_probe.{class_name}",
                                                 "init_args": init_args})  # fmt: skip


def runs(root: Path) -> list[Path]:
    return sorted((root / "tensorboard_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


TASKS = {  # task: (config, fixture with its data arguments, test samples, fit arguments)
    "linreg": ("linreg.yaml", None, 100, ["--trainer.max_epochs=2"]),
    "vision": ("fashion_mnist.yaml", "tiny_idx_args", 40, ["--trainer.max_epochs=2"]),
    "text": ("imdb.yaml", "tiny_text_args", 16, ["--trainer.max_epochs=2", "--trainer.val_check_interval=1.0"]),
    "sft": ("sft_lora.yaml", "tiny_sft_args", 5, ["--trainer.max_steps=4", "--trainer.val_check_interval=2"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_every_stage_under_ddp(task, tmp_path, request, tiny_bert):
    config, fixture, n_test, fit_args = TASKS[task]
    data = request.getfixturevalue(fixture) if fixture else []
    if task == "text":
        data = [*data, f"--model.init_args.model_name_or_path={tiny_bert}"]
    if task == "sft":  # 5 held-out records: uneven shards over 2 ranks
        data = [*data, "--data.init_args.test_size=5", "--model.init_args.sample_prompts=[Double 3.]"]
    root = tmp_path / "out"
    common = ["--config", CONFIGS / config, f"--trainer.default_root_dir={root}", *data]

    # fit, validate, test and predict on 2 processes, as the CLI runs them, in one launch (helpers/ddp_stages.py)
    texts = ["a wonderful film", "a dull mess", "great acting", "I hated it", "brilliant fun"]  # odd: uneven shards
    predict_args = {"text": [f"--data.init_args.predict_texts={json.dumps(texts)}"],
                    "sft": [f"--data.init_args.predict_instructions={json.dumps(texts)}"]}.get(task, [])
    best = root / "tensorboard_logs" / "version_0" / "checkpoints" / "best.ckpt"
    stages = [
        ["fit", *common, *DDP, *fit_args, callback("WeightsDigest", folder=str(tmp_path / "digest"))],
        ["validate", *common, *DDP, f"--ckpt_path={best}"],
        ["test", *common, *DDP, f"--ckpt_path={best}"],
        ["predict", *common, *DDP, f"--ckpt_path={best}", *predict_args],
    ]
    commands = tmp_path / "stages.json"
    commands.write_text(json.dumps([[str(a) for a in argv] for argv in stages]))
    ok(run_python(ROOT / "tests" / "helpers" / "ddp_stages.py", commands))
    ok(llm_course("test", *common, *ONE, f"--ckpt_path={best}"))  # the reference: one process

    # fit: every rank ends with the best weights; one run directory per command, written by rank 0
    digests = {p.name: p.read_text() for p in (tmp_path / "digest").glob("*.sha256")}
    assert set(digests) == {"rank0.sha256", "rank1.sha256"} and len(set(digests.values())) == 1
    fit_run, validate_run, test2_run, predict_run, test1_run = runs(root)  # nothing written twice
    assert best.is_file() and (fit_run / "checkpoints" / "last.ckpt").is_file()
    if task == "text":
        assert (fit_run / "hf_model" / "config.json").is_file()
    if task == "sft":
        assert (fit_run / "adapter" / "adapter_config.json").is_file() and (fit_run / "hf_model").is_dir()

    # test on 2 processes and on 1: the same metrics, every test sample counted once
    two, one = (json.loads((r / "metrics.json").read_text()) for r in (test2_run, test1_run))
    assert not (validate_run / "metrics.json").exists()
    assert set(two) == set(one)
    for key, value in one.items():
        if isinstance(value, list):  # the confusion matrix: counts, exactly
            assert two[key] == value, key
        else:
            assert two[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    if "test/confusion_matrix" in one:
        assert sum(map(sum, two["test/confusion_matrix"])) == n_test

    # predict: one line per input, in input order, with the right text
    if task in ("text", "sft"):
        lines = [json.loads(x) for x in (predict_run / "predictions.jsonl").read_text().splitlines()]
        assert [x.get("text", x.get("instruction")) for x in lines] == texts
        if task == "text":
            assert all(x["label"] in ("neg", "pos") and 0.5 <= x["score"] <= 1 for x in lines)
        else:
            assert all(isinstance(x["answer"], str) for x in lines)


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    proc = llm_course("fit", "--config", CONFIGS / "linreg.yaml", *DDP, f"--trainer.default_root_dir={tmp_path}",
                      "--trainer.max_epochs=3", callback("NaNOnRank", rank=1, step=3))  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    message = "error: The training loss is nan at global step 3 (epoch 0, batch 3) on rank 1 of 2."
    assert proc.stderr.count(message) == 2  # both ranks stopped, at the same step, with the same message


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def torchrun_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # fmt: skip


def finish(procs: list[subprocess.Popen]) -> list[str]:
    """Wait for every launch (all killed on a timeout) and return their stderr."""
    try:
        errs = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("a torchrun launch hung")
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return errs


@pytest.mark.slow
def test_torchrun_one_node_two_processes(tmp_path):
    """Under torchrun, Lightning takes rank and world size from the environment instead of launching processes."""
    env = torchrun_env()
    finish([torchrun("--nproc_per_node=2", f"--master_port={free_port()}", "-m", "llm_course", "fit", "--config",
                     CONFIGS / "linreg.yaml", *DDP, "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}",
                     callback("TouchPerRank", folder=str(tmp_path / "ranks")), env=env)])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir()) == ["rank0-of-2", "rank1-of-2"]
    (run,) = runs(tmp_path)
    # 800 rows, batch 32, 2 ranks: 13 steps in the epoch
    assert __import__("torch").load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 13


@pytest.mark.slow
def test_torchrun_two_nodes_on_one_machine(tmp_path):
    """Two launches, one process each, meeting at a rendezvous on 127.0.0.1: multi-node without a cluster."""
    env, port = torchrun_env(), free_port()
    common = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
              "--rdzv-id=course-test", "-m", "llm_course", "fit", "--config", CONFIGS / "linreg.yaml",
              "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=2", "--trainer.strategy=ddp",
              "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}",
              callback("TouchPerRank", folder=str(tmp_path / "ranks"))]  # fmt: skip
    finish([torchrun("--node_rank=0", *common, env=env), torchrun("--node_rank=1", *common, env=env)])
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir()) == ["rank0-of-2", "rank1-of-2"]
    (run,) = runs(tmp_path)
    assert __import__("torch").load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 13
