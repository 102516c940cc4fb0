"""Module 5 beyond Lightning's launcher: the Accelerate loop under ``accelerate launch`` on 2 CPU processes (gloo),
and ``llm-course bench ddp``. Multi-process runs go through subprocesses with a timeout, so a hang fails the test."""

import json
import math
import os
import shlex
import sys
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, review_rows, run_cli, write_jsonl
from llm_course.distributed.bench import Run, bench_ddp, run_process, summarize
from llm_course.errors import ConfigError, MissingFileError

ACCELERATE_CONFIG = CONFIGS / "accelerate" / "cpu_2proc.yaml"
STEPLOG = "llm_course.distributed.steplog.StepLog"
TIMEOUT = 300


def test_the_accelerate_config_is_what_accelerate_launch_reads():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    head = ACCELERATE_CONFIG.read_text().splitlines()[:3]
    assert head[0].startswith("# Module 5")
    run_line = next(line for line in head if "accelerate launch" in line)
    assert f"--config_file configs/accelerate/{ACCELERATE_CONFIG.name}" in run_line
    assert "-m llm_course.distributed.accelerate_loop" in run_line
    config = load_config_from_file(str(ACCELERATE_CONFIG))
    # the type whose launcher (torchrun) starts the processes; MULTI_CPU would start one without mpirun
    assert config.distributed_type == DistributedType.MULTI_GPU and config.num_processes == 2
    assert ACCELERATE_CONFIG not in CONFIGS.glob("*.yaml")  # not a Lightning config: test_configs skips it


def test_the_loop_takes_a_config_file(tmp_path, capsys):
    from llm_course.distributed.accelerate_loop import main

    with pytest.raises(SystemExit) as exc:
        main(["--train_file=train.jsonl", "--batch_size=8", "--print_config"])
    assert exc.value.code in (0, None)
    (tmp_path / "loop.yaml").write_text(capsys.readouterr().out)
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "loop.yaml"), "--lr=0.001", "--print_config"])
    printed = capsys.readouterr().out
    assert "batch_size: 8" in printed and "lr: 0.001" in printed and "train_file: train.jsonl" in printed


@pytest.mark.slow
def test_accelerate_launch_on_two_cpu_processes_matches_the_lightning_run(tmp_path, tiny_bert, monkeypatch):
    """``accelerate launch`` with the config file, 2 processes × 2 accumulated micro-batches of 4, against
    ``llm-course fit`` on one process × batch 16, same settings otherwise: the same loss at every step (gradients
    accumulated without sync, then all-reduced = the whole batch's), the same validation metrics over every
    validation sample once, the same weights at the end."""
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path / "cache"))
    train = write_jsonl(tmp_path / "train.jsonl", review_rows(128))
    settings = {"max_length": 32, "group_by_length": "false", "val_fraction": 0.25}  # 96 train, 32 validation
    lightning = tmp_path / "lightning"
    callback = [{"class_path": STEPLOG, "init_args": {"path": str(lightning / "record.json")}}]
    run_cli("fit", "--config", CONFIGS / "imdb.yaml", f"--model.init_args.model_name_or_path={tiny_bert}",
            f"--data.init_args.train_file={train}", "--data.init_args.batch_size=16",
            *[f"--data.init_args.{k}={v}" for k, v in settings.items()],
            "--model.init_args.optimizer.init_args.lr=0.003", "--trainer.max_epochs=4", "--trainer.accelerator=cpu",
            "--trainer.precision=32-true",  # the Accelerate loop's default; `auto` would pick bf16 on an AMX CPU
            "--model.init_args.freeze_embeddings=false",  # a random tiny BERT learns through its token table
            "--trainer.val_check_interval=1.0", "--trainer.check_val_every_n_epoch=4",
            "--trainer.enable_checkpointing=false", "--trainer.logger=false",
            f"--trainer.default_root_dir={lightning}", f"--trainer.callbacks={json.dumps(callback)}")  # fmt: skip

    out = tmp_path / "accelerate"
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--config_file", str(ACCELERATE_CONFIG), "--main_process_port", "0",
               "-m", "llm_course.distributed.accelerate_loop", f"--train_file={train}",
               f"--model_name_or_path={tiny_bert}", "--batch_size=4", "--gradient_accumulation_steps=2",
               *[f"--{k}={v}" for k, v in settings.items()],
               "--lr=0.003", "--epochs=4", "--freeze_embeddings=false", f"--output_dir={out}"]  # fmt: skip
    run_process(command, dict(os.environ), tmp_path / "accelerate.log", TIMEOUT)
    log = (tmp_path / "accelerate.log").read_text()
    assert "2 process(es) on cpu" in log and "MULTI_CPU" in log, log[-2000:]

    ours = json.loads((out / "metrics.json").read_text())
    ref = json.loads((lightning / "record.json").read_text())
    assert (ours["world_size"], ref["world_size"]) == (2, 1)
    assert len(ours["peak_mem_mb"]) == 2 and all(m > 0 for m in ours["peak_mem_mb"])
    assert ours["steps"] == ref["steps"] == 24 and ours["samples"] == ref["samples"] == 4 * 96
    assert max(abs(a - b) for a, b in zip(ours["losses"], ref["losses"], strict=True)) < 1e-4
    assert ours["losses"][-1] < ours["losses"][0] - 0.1  # it learned
    assert ours["val"]["val/samples"] == 32  # every validation sample once: no repeats from the even last batch
    assert ours["val"]["val/acc"] == ref["val"]["val/acc"] >= 0.9
    assert ours["val"]["val/f1"] == ref["val"]["val/f1"]
    assert abs(ours["val"]["val/loss"] - ref["val"]["val/loss"]) < 1e-4

    from safetensors.torch import load_file

    ref_weights = load_file(next(lightning.rglob("hf_model/model.safetensors")))
    our_weights = load_file(out / "hf_model" / "model.safetensors")
    assert ref_weights.keys() == our_weights.keys()
    assert all(torch.allclose(ref_weights[k], our_weights[k], atol=1e-4) for k in ref_weights)


def test_bench_ddp_needs_a_train_file_and_a_divisible_batch(tmp_path):
    with pytest.raises(MissingFileError, match="--train_file"):
        bench_ddp(train_file=str(tmp_path / "missing.jsonl"), output_dir=str(tmp_path))
    train = write_jsonl(tmp_path / "train.jsonl", review_rows(8))
    with pytest.raises(ConfigError, match="--global_batch_size=9"):
        bench_ddp(train_file=str(train), output_dir=str(tmp_path), global_batch_size=9,
                  task_config=str(CONFIGS / "imdb.yaml"), accelerate_config=str(ACCELERATE_CONFIG))  # fmt: skip
    with pytest.raises(SystemExit):
        run_cli("bench", "ddp", "--output_dir", tmp_path)  # --train_file is required


@pytest.mark.slow
def test_bench_ddp_on_tiny_data(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path / "cache"))
    train = write_jsonl(tmp_path / "train.jsonl", review_rows(64))
    out = tmp_path / "bench"
    bench_ddp(train_file=str(train), output_dir=str(out), model_name_or_path=tiny_bert, steps=4, global_batch_size=8,
              max_length=32, accelerate=True, task_config=str(CONFIGS / "imdb.yaml"),
              accelerate_config=str(ACCELERATE_CONFIG), timeout=TIMEOUT)  # fmt: skip
    report = json.loads((out / "ddp.json").read_text())
    assert (out / "ddp.png").stat().st_size > 10_000
    runs = report["runs"]
    assert set(runs) == {"lightning_1p_1t", "lightning_1p_2t", "lightning_2p_1t", "accelerate_1p_1t",
                         "accelerate_2p_1t"}  # fmt: skip
    for name, run in runs.items():
        assert run["steps"] == 4 and run["samples"] == 32, name
        assert run["samples_per_sec"] > 0 and run["samples_per_sec_median_step"] > 0 and run["train_seconds"] > 0
        assert len(run["step_seconds"]) == 4 and len(run["load_average"]) == 2, name
        assert len(run["peak_mem_mb"]) == run["world_size"] == run["processes"], name
        assert run["threads_per_process"] == run["threads"], name  # OMP_NUM_THREADS reached the workers
        assert shlex.split(run["command"])[0] == sys.executable
    assert set(report["speedup_vs"]["lightning"]) == {"1p_1t", "1p_2t"} and set(report["speedup_vs"]["accelerate"]) == {
        "1p_1t"}  # fmt: skip
    for fw in ("lightning", "accelerate"):
        assert 0 < report["scaling_efficiency"][fw] and 0 < report["speedup_vs"][fw]["1p_1t"]
        assert report["loss_max_abs_diff"][fw] < 1e-4, fw  # the gradient-sync check
    assert report["settings"]["global_batch_size"] == 8 and report["machine"]["cpu_count"]


def test_each_speedup_names_the_run_it_divides_by():
    """Lightning's N processes are compared with 1 process × 1 thread and 1 process × N threads, Accelerate's with
    the 1 × 1 run it made: one key, one meaning (it once held Lightning's ÷ 1p_2t beside Accelerate's ÷ 1p_1t)."""
    speeds = {Run("lightning", 1, 1): 10.0, Run("lightning", 1, 2): 20.0, Run("lightning", 2, 1): 16.0,
              Run("accelerate", 1, 1): 8.0, Run("accelerate", 2, 1): 14.0}  # fmt: skip
    records = {run.name: {"samples_per_sec_median_step": s, "losses": [0.7, 0.6]} for run, s in speeds.items()}
    out = summarize(records, processes=2, cpu=True)
    assert out["speedup_vs"] == {"lightning": {"1p_1t": 1.6, "1p_2t": 0.8}, "accelerate": {"1p_1t": 1.75}}
    assert out["scaling_efficiency"] == {"lightning": 0.8, "accelerate": 0.875}
    assert "speedup_vs_one_process" not in out
    frameworks = ("lightning", "accelerate")
    gpus = {Run(fw, n, None).name: {"samples_per_sec_median_step": 10.0 * n, "losses": [0.7]}
            for fw in frameworks for n in (1, 2)}  # fmt: skip
    assert summarize(gpus, processes=2, cpu=False)["speedup_vs"] == {fw: {"1p": 2.0} for fw in frameworks}


@pytest.fixture
def fresh_accelerate(monkeypatch, tmp_path):
    """The Accelerate loop run in this process: its state singletons reset before and after, the environment
    variables it sets restored, tokenized data cached in ``tmp_path``."""
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # train() sets it; monkeypatch puts the old value back
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def recorded_schedules(monkeypatch) -> list:
    """Every ``WarmupDecayLR`` the loops build from now on (both import it from ``llm_course.training`` when run)."""
    import llm_course.training
    from llm_course.training import WarmupDecayLR

    built = []

    class Recorded(WarmupDecayLR):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(llm_course.training, "WarmupDecayLR", Recorded)
    return built


# 40 reviews, 8 held out: 32 to train on, 4 batches of 8
TINY_RUN = {"label_names": ["neg", "pos"], "val_fraction": 0.2, "batch_size": 8, "max_length": 32,
            "group_by_length": False, "validate": False}  # fmt: skip


def test_both_loops_size_the_schedule_by_the_steps_that_run(tmp_path, tiny_bert, monkeypatch, fresh_accelerate):
    """max_steps=100 on data for 2 optimizer steps (4 batches, 3 accumulated: the short last group steps too):
    the warm-up and linear decay are laid over those 2 steps and end at 0, in the Accelerate loop and the plain
    loop alike (they were laid over 100, and the run ended with the learning rate near its peak)."""
    from llm_course.distributed.accelerate_loop import train
    from llm_course.optimization.plain_loop import fit_plain
    from llm_course.training import planned_steps

    assert (planned_steps(4, 3, 1, 100), planned_steps(4, 3, 2), planned_steps(4, 1, 3, 5)) == (2, 4, 5)
    schedules = recorded_schedules(monkeypatch)
    data = write_jsonl(tmp_path / "train.jsonl", review_rows(40))
    common = {"train_file": str(data), "model_name_or_path": tiny_bert, "max_steps": 100, **TINY_RUN}
    accelerate = train(**common, gradient_accumulation_steps=3, cpu=True, save_model=False,
                       output_dir=str(tmp_path / "accelerate"), log_every_n_steps=1)  # fmt: skip
    plain = fit_plain(**common, accumulate_grad_batches=3, device="cpu")
    assert accelerate["steps"] == plain["steps"] == 2 and accelerate["samples"] == plain["samples"] == 32
    assert [s.total_steps for s in schedules] == [2, 2]
    assert [s.get_last_lr() for s in schedules] == [[0.0], [0.0]]  # the decay ran to its end


def test_an_fp16_step_the_grad_scaler_skips_does_not_stop_the_accelerate_loop(tmp_path, tiny_bert, monkeypatch,
                                                                              fresh_accelerate):  # fmt: skip
    """fp16 under a GradScaler whose scale overflows every scaled gradient (an infinite scale): each step has an
    inf/NaN gradient norm, which the scaler answers by skipping the step, as on a GPU after a loss spike. The loop
    counts the skipped steps and goes on (as the plain loop and the Lightning guard do), and the weights are the
    ones it started from; the loss itself stays checked."""
    import accelerate
    from safetensors.torch import load_file

    from llm_course.distributed.accelerate_loop import check_finite, train
    from llm_course.errors import NonFiniteError

    class OverflowingScaler(accelerate.Accelerator):  # what Accelerator(mixed_precision="fp16") builds on CUDA
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.native_amp, self.scaler = True, torch.amp.GradScaler("cpu", init_scale=float("inf"))

    monkeypatch.setattr(accelerate, "Accelerator", OverflowingScaler)
    data = write_jsonl(tmp_path / "train.jsonl", review_rows(40))
    out = tmp_path / "fp16"
    record = train(str(data), model_name_or_path=tiny_bert, mixed_precision="fp16", cpu=True, output_dir=str(out),
                   **TINY_RUN)  # fmt: skip
    assert record["steps"] == record["skipped_steps"] == 4 and all(math.isfinite(x) for x in record["losses"])
    before, after = load_file(Path(tiny_bert) / "model.safetensors"), load_file(out / "hf_model" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(NonFiniteError, match="gradient norm is inf at optimizer step 3"):
        check_finite(0.5, math.inf, 3)  # without a scaler an inf norm stops the run
    with pytest.raises(NonFiniteError, match="training loss is nan"):
        check_finite(math.nan, 1.0, 3, grad_scaler=True)
