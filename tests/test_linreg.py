"""Module 1: regression recovers known weights, seeded runs reproduce bit for bit, resume equals no interruption."""

import math
import subprocess
import sys
from functools import partial

import lightning as L
import pytest
import torch

from conftest import CONFIGS, load_state, run_cli, run_dir
from llm_course.callbacks import NaNGuard, NonFiniteError
from llm_course.linreg import RegressionDataModule, RegressionTask
from llm_course.training import checkpoint_callbacks

LINREG = CONFIGS / "linreg.yaml"
FAST = ("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")


def fit(root, *extra):
    run_cli("fit", "--config", LINREG, f"--trainer.default_root_dir={root}", *FAST, *extra)
    return run_dir(root)


def test_synthetic_regression_recovers_true_weights(tmp_path):
    run = fit(tmp_path)
    state = load_state(run / "checkpoints" / "best.ckpt")
    data = RegressionDataModule(source="synthetic")
    data.setup()
    # noise_std=0.1 on 800 training rows: least squares itself sits within ~0.01 of the truth.
    assert torch.allclose(state["net.linear.weight"].squeeze(0), data.true_weight, atol=0.03)
    assert state["net.linear.bias"].item() == pytest.approx(data.true_bias, abs=0.03)


def test_same_seed_gives_identical_weights_and_other_seed_differs(tmp_path):
    a = load_state(fit(tmp_path / "a", "--trainer.max_epochs=3") / "checkpoints" / "last.ckpt")
    b = load_state(fit(tmp_path / "b", "--trainer.max_epochs=3") / "checkpoints" / "last.ckpt")
    c = load_state(fit(tmp_path / "c", "--trainer.max_epochs=3", "--seed_everything=7") / "checkpoints" / "last.ckpt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["net.linear.weight"], c["net.linear.weight"])


def test_resume_from_last_checkpoint_matches_uninterrupted_run(tmp_path):
    full = load_state(fit(tmp_path / "full", "--trainer.max_epochs=6") / "checkpoints" / "last.ckpt")
    first = fit(tmp_path / "part", "--trainer.max_epochs=3") / "checkpoints" / "last.ckpt"
    assert not torch.equal(load_state(first)["net.linear.weight"], full["net.linear.weight"])
    resumed_run = fit(tmp_path / "resumed", "--trainer.max_epochs=6", f"--ckpt_path={first}")
    resumed = torch.load(resumed_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 5
    for key in full:
        assert torch.equal(resumed["state_dict"][key], full[key]), key


def test_unknown_key_fails_with_its_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        fit(tmp_path, "--model.init_args.learning_rat=0.1")
    assert exc.value.code != 0
    assert "learning_rat" in capsys.readouterr().err


def test_wrong_value_names_the_key_and_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        fit(tmp_path, "--data.init_args.source=bostn")
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "source" in err and "bostn" in err


def test_fp16_on_cpu_is_refused_with_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        fit(tmp_path, "--trainer.accelerator=cpu", "--trainer.precision=16-mixed")
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "16-mixed" in err and "bf16-mixed" in err and "Traceback" not in err


def test_bf16_mixed_runs_on_cpu_and_warns_where_it_is_emulated(tmp_path, monkeypatch):
    from llm_course import trainer_cli as cli

    monkeypatch.setattr(cli, "cpu_has_bf16_units", lambda: False)
    with pytest.warns(UserWarning, match=r"bf16-mixed on a CPU without AVX512-BF16 or AMX.*precision=32-true"):
        run = fit(tmp_path, "--trainer.accelerator=cpu", "--trainer.precision=bf16-mixed", "--trainer.max_epochs=2")
    state = load_state(run / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in state.values())


class PoisonAtEpoch(L.Callback):
    """Turns one weight into NaN at the start of ``epoch``, as a diverged run would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                pl_module.net.linear.weight[0, 0] = math.nan


def test_nan_guard_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    model = RegressionTask(in_features=8, optimizer=partial(torch.optim.SGD, lr=0.05))
    trainer = L.Trainer(
        max_epochs=5, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
        callbacks=[NaNGuard(), PoisonAtEpoch(2), *checkpoint_callbacks(*model.checkpoint_monitor)],
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"training loss is nan at global step 50 \(epoch 2"):
        trainer.fit(model, RegressionDataModule(source="synthetic"))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 50
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_nan_guard_checks_the_gradient_norm(tmp_path):
    class InfGrad(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            pl_module.net.linear.weight.grad[0, 0] = math.inf

    model = RegressionTask(in_features=8)
    trainer = L.Trainer(
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        callbacks=[NaNGuard(), InfGrad()],
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    before = model.net.linear.weight.detach().clone()
    with pytest.raises(NonFiniteError, match="gradient norm is inf at global step 0"):
        trainer.fit(model, RegressionDataModule(source="synthetic"))
    assert torch.equal(model.net.linear.weight.detach(), before)  # the optimizer never stepped


def test_nan_guard_error_reaches_the_user_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        fit(tmp_path, "--model.init_args.optimizer.init_args.lr=1e6", "--trainer.max_epochs=2")
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "at global step" in err and "learning rate" in err


def test_checkpoint_callback_keeps_best_and_last(tmp_path):
    run = fit(tmp_path, "--trainer.max_epochs=2")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "best.safetensors", "last.ckpt"]
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    callback_state = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert callback_state["monitor"] == "val/loss"


def test_test_writes_metrics_json(tmp_path):
    import json

    run = fit(tmp_path, "--trainer.max_epochs=2")
    run_cli("test", "--config", LINREG, f"--trainer.default_root_dir={tmp_path}", *FAST,
            f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}")  # fmt: skip
    metrics = json.loads((run_dir(tmp_path) / "metrics.json").read_text())
    assert set(metrics) == {"test/loss", "test/mae", "test/r2"}
    assert 0 < metrics["test/loss"] < 0.2 and metrics["test/r2"] > 0.97


def test_ddp_two_cpu_processes(tmp_path):
    cmd = [
        sys.executable, "-m", "llm_course", "fit", "--config", str(LINREG), "--trainer.accelerator=cpu",
        "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_epochs=2",
        f"--trainer.default_root_dir={tmp_path}", *FAST,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = torch.load(run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    # 800 training rows, batch 32, split over 2 ranks: ceil(400 / 32) = 13 steps per epoch.
    assert last["global_step"] == 2 * 13


def test_bf16_hardware_check_matches_the_cpu_flags_and_silences_the_warning(monkeypatch):
    import platform
    import warnings
    from pathlib import Path

    from llm_course import trainer_cli as cli

    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() == "x86_64" and cpuinfo.exists():
        flags = set(cpuinfo.read_text().split())
        assert cli.cpu_has_bf16_units() == bool(flags & {"avx512_bf16", "amx_tile"})
    monkeypatch.setattr(cli, "cpu_has_bf16_units", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cli.check_precision("bf16-mixed", "cpu")  # hardware bf16: no warning


def test_data_checks_name_the_key_before_any_data_is_read():
    from llm_course.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.val_fraction \+ data.test_fraction = 0.5 \+ 0.6 = 1.1 leaves no"):
        RegressionDataModule(val_fraction=0.5, test_fraction=0.6)
    with pytest.raises(ConfigError, match=r"data.val_fraction=0 must lie in \(0, 1\)"):
        RegressionDataModule(val_fraction=0)
    with pytest.raises(ConfigError, match="data.source='bostn' is not one of: synthetic, boston"):
        RegressionDataModule(source="bostn")


def test_boston_split_is_the_one_the_benchmark_measured():
    data = RegressionDataModule(source="boston")
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (404, 51, 51)
    train_x = data.train_set.tensors[0]  # standardized with the training rows' own statistics
    assert torch.allclose(train_x.mean(0), torch.zeros(13), atol=1e-5)
    assert torch.allclose(train_x.std(0), torch.ones(13), atol=1e-5)
