"""Sharded strategies this machine or install cannot run fail at once, in one line that names the way out.

FSDP: torch 2.13 shards over gloo on CPU (FSDP1 with ``device_id=cpu`` and FSDP2 both train), but Lightning 2.6's
``FSDPStrategy`` refuses ``accelerator="cpu"``, and bypassing that check fails inside torch ("FSDP needs a non-CPU
accelerator device"), so the course refuses it before building anything. DeepSpeed needs the ``[deepspeed]`` extra
and CUDA.
"""

import importlib.util

import lightning as L
import pytest
import torch

from conftest import CONFIGS, run_cli
from llm_course.errors import ConfigError
from llm_course.trainer_cli import check_strategy

LINREG = str(CONFIGS / "linreg.yaml")


def refused(capsys, tmp_path, *args: str) -> str:
    """Run ``fit`` on linreg with ``args``; assert it stopped with a one-line user error before any run started."""
    with pytest.raises(SystemExit) as exc:
        run_cli("fit", "--config", LINREG, f"--trainer.default_root_dir={tmp_path}", *args)
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "Traceback" not in err
    assert not (tmp_path / "tensorboard_logs").exists()  # refused before the Trainer or a logger existed
    return err


@pytest.mark.parametrize(
    "strategy", ["deepspeed", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload"]
)
def test_deepspeed_on_cpu_names_the_extra_cuda_and_the_alternatives(strategy, capsys, tmp_path):
    err = refused(capsys, tmp_path, "--trainer.accelerator=cpu", f"--trainer.strategy={strategy}")
    assert f"\nerror: --trainer.strategy={strategy} needs " in "\n" + err
    assert "a CUDA GPU" in err and "--trainer.strategy=ddp" in err and "--trainer.strategy=fsdp" in err
    if importlib.util.find_spec("deepspeed") is None:
        assert 'pip install -e ".[deepspeed]"' in err and "pip install deepspeed" in err


@pytest.mark.parametrize("args", [["--trainer.devices=2"], ["--trainer.devices=1"]])
def test_fsdp_on_cpu_says_it_needs_cuda_and_offers_ddp(args, capsys, tmp_path):
    err = refused(capsys, tmp_path, "--trainer.accelerator=cpu", "--trainer.strategy=fsdp", *args)
    assert (
        "\nerror: --trainer.strategy=fsdp needs CUDA GPUs: Lightning's FSDP strategy supports CUDA only, and this "
        "run asks for --trainer.accelerator=cpu. On CPU use --trainer.strategy=ddp"
    ) in "\n" + err


def test_a_strategy_class_path_is_checked_too(capsys, tmp_path):
    overlay = tmp_path / "fsdp.yaml"
    overlay.write_text("trainer:\n  strategy:\n    class_path: lightning.pytorch.strategies.FSDPStrategy\n")
    err = refused(capsys, tmp_path, "--config", str(overlay), "--trainer.accelerator=cpu")
    assert "--trainer.strategy=lightning.pytorch.strategies.FSDPStrategy needs CUDA GPUs" in err


def test_check_strategy_passes_what_can_run(monkeypatch):
    for strategy in (None, "auto", "ddp", "ddp_spawn", "single_device"):
        check_strategy(strategy, "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_strategy("fsdp", "gpu")
    check_strategy("fsdp", "auto")
    with pytest.raises(ConfigError, match="asks for --trainer.accelerator=cpu"):
        check_strategy("fsdp", "cpu")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else
                        real_find_spec(name, *a))  # fmt: skip
    check_strategy("deepspeed_stage_3", "gpu")  # installed and on CUDA: Lightning takes it from here


def test_check_strategy_names_only_what_is_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError) as exc:
        check_strategy("deepspeed_stage_2", "gpu")
    assert "pip install -e" in str(exc.value) and "a CUDA GPU" not in str(exc.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="this machine has no CUDA device"):
        check_strategy("fsdp", "auto")


def test_lightning_still_refuses_fsdp_on_cpu():
    """The reason check_strategy refuses FSDP on CPU. If this fails, Lightning has learned FSDP on CPU: try
    ``--trainer.strategy=fsdp`` on 2 CPU processes again and drop the refusal if it trains."""
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        L.Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False)
