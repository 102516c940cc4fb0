"""Every config is a test: it parses and completes a fast_dev_run on CPU."""

import pytest
import torch
import yaml

from conftest import CONFIGS, run_cli
from llm_course.trainer_cli import CourseCLI

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
# Configs whose data is not embedded get tiny local files from a fixture named here.
NEEDS_FILES: dict[str, str] = {
    "fashion_mnist": "tiny_idx_args",
    "imdb": "tiny_text_args",
    "ag_news": "tiny_text_args",
    **dict.fromkeys(("sft_lora", "sft_qlora", "sft_gpt2"), "tiny_sft_args"),
}


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.stem)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli("fit", "--config", config, "--print_config")
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("llm_course.")
    assert printed["data"]["class_path"].startswith("llm_course.")
    assert printed["seed_everything"] == 42


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.stem)
def test_config_fast_dev_run(config, tmp_path, request):
    extra = request.getfixturevalue(NEEDS_FILES[config.stem]) if config.stem in NEEDS_FILES else []
    cli = CourseCLI([
        "fit", "--config", str(config), "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}", *extra,
    ])  # fmt: skip
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss_step"])


def test_first_lines_say_what_and_how():
    for config in ALL_CONFIGS:
        head = config.read_text().splitlines()[:3]
        assert head[0].startswith("# Module"), config.name
        assert any(f"llm-course fit --config configs/{config.name}" in line for line in head), config.name
