"""Every config is a test: it parses, and it runs a few real steps and a test with checkpoints and loggers on.

An overlay config (``sft_qlora.yaml``) runs on top of the base its header names, exactly as its Run line says.
"""

import json
import re
import shlex

import pytest
import torch
import yaml

from conftest import CONFIGS, ROOT, run_cli, run_dir

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
# Configs whose data is not embedded get tiny local files from a fixture named here.
NEEDS_FILES: dict[str, str] = {
    "fashion_mnist": "tiny_idx_args",
    "imdb": "tiny_text_args",
    "ag_news": "tiny_text_args",
    **dict.fromkeys(("sft_lora", "sft_qlora", "sft_gpt2"), "tiny_sft_args"),
    "rag_lora": "tiny_rag_args",
    "agent_lora": "tiny_agent_args",
}
LORA_RUNS = ("sft", "rag_lora", "agent_lora")  # configs whose fit writes adapter/ and hf_model/


@pytest.fixture
def tiny_rag_args(tmp_path, tiny_llama):
    """Grounded-answer records in the format ``rag raft-data`` writes (numbered passages, a cited answer), tiny."""
    from conftest import write_jsonl
    from llm_course.rag.raft import example

    rows = [example(f"How many apples in box {i}?", [(f"n.md#box-{i}", f"Box {i} holds {i} apples."),
                                                      (f"n.md#box-{i + 1}", f"Box {i + 1} holds {i + 1} apples.")],
                    f"Box {i} holds {i} apples. [1]", source="notes", covered=True) for i in range(24)]  # fmt: skip
    train, val = write_jsonl(tmp_path / "train.jsonl", rows[:16]), write_jsonl(tmp_path / "val.jsonl", rows[16:])
    return [f"--model.init_args.model_name_or_path={tiny_llama}", f"--data.init_args.train_file={train}",
            f"--data.init_args.val_file={val}", "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4"]


@pytest.fixture
def tiny_agent_args(tmp_path, tiny_llama):
    """Tool-use records as ``agent-data`` writes them (24 of them), for the tiny byte-level model: its tokens are
    bytes, so the records need a longer ``max_length`` than SmolLM2's tokens do."""
    from llm_course.agent.tooluse_data import agent_data

    out = tmp_path / "tooluse"
    agent_data(str(out), n=24, seed=0, notes=str(ROOT / "notes"), val_share=0.25)
    return [f"--model.init_args.model_name_or_path={tiny_llama}", f"--data.init_args.train_file={out / 'train.jsonl'}",
            f"--data.init_args.val_file={out / 'val.jsonl'}", "--data.init_args.max_length=4096",
            "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4"]  # fmt: skip


def run_line_configs(config) -> list[str]:
    """The ``--config`` files of the ``# Run:`` line in ``config``'s header, in order."""
    line = next(x for x in config.read_text().splitlines()[:3] if "llm-course fit" in x)
    args = shlex.split(line.split("llm-course", 1)[1], comments=True)
    return [str(ROOT / args[i + 1]) for i, a in enumerate(args) if a == "--config"]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.stem)
def test_config_parses(config, capsys):
    configs = run_line_configs(config)
    assert str(config) in configs, f"{config.name}'s Run line does not use it"
    with pytest.raises(SystemExit) as exc:
        run_cli("fit", *[a for c in configs for a in ("--config", c)], "--print_config")
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("llm_course.")
    assert printed["data"]["class_path"].startswith("llm_course.")
    assert printed["seed_everything"] == 42
    overlay = yaml.safe_load(config.read_text())
    if "class_path" not in overlay.get("model", {}):  # an overlay: its values win over the base's
        for key, value in overlay["model"]["init_args"].items():
            assert printed["model"]["init_args"][key] == value, key


@pytest.mark.slow
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.stem)
def test_config_runs_steps_and_test_with_checkpoints(config, tmp_path, request):
    """Two real training steps, a validation and the end-of-fit hooks, then ``test`` on the best checkpoint."""
    extra = request.getfixturevalue(NEEDS_FILES[config.stem]) if config.stem in NEEDS_FILES else []
    if config.stem.startswith(LORA_RUNS):
        extra += ["--data.init_args.test_size=4"]
    configs = [a for c in run_line_configs(config) for a in ("--config", c)]
    trainer_cfg: dict = {}
    for c in run_line_configs(config):  # later configs override earlier ones
        trainer_cfg |= yaml.safe_load(open(c)).get("trainer") or {}
    accumulate = trainer_cfg.get("accumulate_grad_batches", 1)
    common = [*configs, "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}", *extra]
    run_cli("fit", *common, "--trainer.max_steps=2", "--trainer.max_epochs=1",
            f"--trainer.limit_train_batches={2 * accumulate}", "--trainer.limit_val_batches=2",
            "--trainer.val_check_interval=1.0", "--trainer.check_val_every_n_epoch=1")  # fmt: skip
    run = run_dir(tmp_path)
    ckpts = run / "checkpoints"
    assert (ckpts / "best.ckpt").is_file() and (ckpts / "last.ckpt").is_file()
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard events"
    if config.stem.startswith(LORA_RUNS):  # ExportBestWeights leaves these to the task's own on_fit_end
        assert (run / "adapter" / "adapter_config.json").is_file() and (run / "hf_model" / "config.json").is_file()
    elif config.stem in ("imdb", "ag_news"):
        assert (run / "hf_model" / "config.json").is_file()
    else:
        assert (ckpts / "best.safetensors").is_file()

    run_cli("test", *common, f"--ckpt_path={ckpts / 'best.ckpt'}")
    metrics = json.loads((run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics and all(k.startswith("test/") for k in metrics)
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))


def test_first_lines_say_what_and_how():
    for config in ALL_CONFIGS:
        head = config.read_text().splitlines()[:3]
        assert head[0].startswith("# Module"), config.name
        assert any(re.search(rf"llm-course fit (--config configs/\S+ )*--config configs/{config.name}", line)
                   for line in head), config.name  # fmt: skip
