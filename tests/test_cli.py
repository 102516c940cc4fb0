"""The command line: one-way imports and start-up cost, errors that tell the truth, the user's Trainer settings win,
and progress lines on long runs."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import CONFIGS, ROOT, run_cli, run_dir

LINREG = str(CONFIGS / "linreg.yaml")
QUIET = ["--trainer.enable_model_summary=false", "--trainer.max_epochs=2"]


def fresh_python(code: str, **env: str) -> str:
    """Run ``code`` in a new interpreter (nothing imported yet) and return what it printed."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env}, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_task_packages_import_no_cli_benchmark_or_plotting():
    printed = fresh_python("""
        import sys
        import llm_course.linreg, llm_course.vision, llm_course.text, llm_course.sft
        import llm_course.training, llm_course.callbacks, llm_course.assets
        print(" ".join(sorted(sys.modules)))
    """)
    modules = set(printed.split())
    leaked = {m for m in modules if m in ("llm_course.cli", "llm_course.trainer_cli", "llm_course.bench",
                                          "llm_course.plotting", "llm_course.reports") or m.endswith(".bench")}
    assert not leaked, leaked
    assert "llm_course.linreg.module" in modules


def test_the_users_matplotlib_backend_survives_the_cli_and_the_benchmarks():
    printed = fresh_python("""
        import importlib
        import matplotlib
        import llm_course.cli
        from llm_course.bench import BENCHMARKS
        for target in BENCHMARKS.values():
            importlib.import_module(target.split(":")[0])
        import llm_course.plotting
        fig, ax = llm_course.plotting.subplots()
        ax.plot([0, 1])
        fig.savefig("/dev/null", format="png")
        print(matplotlib.get_backend())
    """, MPLBACKEND="svg")
    assert printed.strip() == "svg"


def test_help_and_env_import_neither_lightning_nor_training_code():
    printed = fresh_python("""
        import sys
        from llm_course.cli import main
        main(["--help"])
        print("after-help", "torch" in sys.modules, "lightning" in sys.modules)
        main(["env", "--as_json=true"])
        heavy = [m for m in ("lightning", "transformers", "llm_course.training", "llm_course.trainer_cli")
                 if m in sys.modules]
        print("after-env", heavy)
    """)
    assert "usage: llm-course COMMAND" in printed and "bench" in printed
    assert "after-help False False" in printed
    assert "after-env []" in printed
    assert '"cpu_count"' in printed


def test_a_user_mistake_prints_one_line_without_traceback(capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli("fit", "--config", LINREG, "--trainer.accelerator=cpu", "--trainer.precision=16-mixed")
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "\nerror: --trainer.precision=16-mixed needs a CUDA GPU" in "\n" + err
    assert "Traceback" not in err


def test_an_internal_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """A ValueError that no course code raised on purpose (here: a shape mismatch in the loss) is a bug."""
    from llm_course.linreg import module

    def broken_mse(pred, target):
        return torch.nn.functional.cross_entropy(pred.unsqueeze(0), target.long())  # batch sizes 1 vs 32

    monkeypatch.setattr(module.F, "mse_loss", broken_mse)
    with pytest.raises(ValueError, match="batch_size"):  # not swallowed into a one-line "user error"
        run_cli("fit", "--config", LINREG, f"--trainer.default_root_dir={tmp_path}", *QUIET)


def test_a_truncated_checkpoint_is_named_in_one_line(tmp_path, capsys):
    run_cli("fit", "--config", LINREG, f"--trainer.default_root_dir={tmp_path}", *QUIET)
    good = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    cut = tmp_path / "truncated.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SystemExit) as exc:
        run_cli("test", "--config", LINREG, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={cut}")
    err = capsys.readouterr().err
    assert exc.value.code == 1 and f"--ckpt_path={cut} is not a complete checkpoint" in err
    assert "central directory" not in err and "serialization.py" not in err  # no torch.load traceback
    with pytest.raises(SystemExit):
        run_cli("test", "--config", LINREG, f"--ckpt_path={tmp_path / 'missing.ckpt'}")
    assert "no such file" in capsys.readouterr().err


def test_checkpointing_off_writes_no_checkpoint(tmp_path):
    run_cli("fit", "--config", LINREG, f"--trainer.default_root_dir={tmp_path}", *QUIET,
            "--trainer.enable_checkpointing=false")  # fmt: skip
    run = run_dir(tmp_path)
    assert list(run.glob("events.out.tfevents.*")) and not (run / "checkpoints").exists()
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_model_checkpoint_from_yaml_is_used_instead_of_the_defaults(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text(textwrap.dedent("""
        trainer:
          callbacks:
            - class_path: lightning.pytorch.callbacks.ModelCheckpoint
              init_args:
                filename: epoch{epoch}
                save_top_k: -1
                auto_insert_metric_name: false
    """))
    run_cli("fit", "--config", LINREG, "--config", own, f"--trainer.default_root_dir={tmp_path}", *QUIET)
    names = sorted(p.name for p in (run_dir(tmp_path) / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch0.ckpt", "epoch1.ckpt"]


def test_default_checkpoints_when_the_user_sets_nothing(tmp_path):
    run_cli("fit", "--config", LINREG, f"--trainer.default_root_dir={tmp_path}", *QUIET)
    names = sorted(p.name for p in (run_dir(tmp_path) / "checkpoints").glob("*.ckpt"))
    assert names == ["best.ckpt", "last.ckpt"]


def test_progress_lines_off_a_terminal(tmp_path, capsys):
    from llm_course.callbacks import ProgressLog

    own = tmp_path / "progress.yaml"
    own.write_text("trainer:\n  callbacks:\n    - class_path: llm_course.callbacks.ProgressLog\n"
                   "      init_args:\n        interval: 0.0\n")  # fmt: skip
    run_cli("fit", "--config", LINREG, "--config", own, f"--trainer.default_root_dir={tmp_path}", *QUIET)
    lines = capsys.readouterr().err.splitlines()
    train = [x for x in lines if x.startswith("train epoch 1 ")]
    assert len(train) == 25, lines[:5]  # 800 rows / batch 32: one line per batch at interval 0
    last = train[-1]
    assert "batch 25/25" in last and "step 50/50" in last and "samples/s" in last and "ETA 0m00s" in last
    assert " loss " in last
    assert any(x.startswith("validate epoch 1  batch 4/4") for x in lines)
    assert any(x.startswith("epoch 1 done in ") and "val/loss=" in x for x in lines)
    assert ProgressLog().interval == 30.0  # the default: a line at least every 30 s


def test_benchmarks_keep_progress_on_stderr(tmp_path, capsys):
    from llm_course.bench import fit_then_test

    run = fit_then_test(["--config", LINREG, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1"])
    err = capsys.readouterr().err
    assert "epoch 0 done in " in err and run.test["test/loss"] > 0


@pytest.mark.parametrize(
    ("cuda", "gpu_bf16", "cpu_bf16", "accelerator", "expected"),
    [
        (True, True, False, "auto", "bf16-mixed"),  # Ampere and newer
        (True, False, False, "gpu", "16-mixed"),  # Volta, Turing: fp16 autocast + grad scaler
        (False, False, True, "auto", "bf16-mixed"),  # AVX512-BF16 / AMX CPU
        (False, False, False, "auto", "32-true"),  # bf16 would be emulated
        (True, True, False, "cpu", "32-true"),  # a GPU exists but the run is on the CPU, which has no bf16 units
    ],
)
def test_auto_precision_fits_the_hardware(monkeypatch, cuda, gpu_bf16, cpu_bf16, accelerator, expected):
    from llm_course import trainer_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu_bf16)
    monkeypatch.setattr(trainer_cli, "cpu_has_bf16_units", lambda: cpu_bf16)
    precision, reason = trainer_cli.auto_precision(accelerator)
    assert precision == expected and reason


def test_auto_precision_is_logged_and_an_explicit_value_wins(tmp_path, caplog):
    import logging

    from llm_course.trainer_cli import CourseCLI, auto_precision

    args = ["--config", LINREG, f"--trainer.default_root_dir={tmp_path}", "--trainer.accelerator=cpu"]
    with caplog.at_level(logging.INFO):
        cli = CourseCLI([*args, "--trainer.precision=auto"], run=False)
    chosen, reason = auto_precision("cpu")
    assert cli.trainer.precision == chosen and f"precision: auto -> {chosen} ({reason})" in caplog.text
    assert CourseCLI([*args, "--trainer.precision=bf16-mixed"], run=False).trainer.precision == "bf16-mixed"
    assert CourseCLI(args, run=False).trainer.precision == "32-true"  # linreg.yaml says so


def test_a_checkpoint_cannot_switch_on_remote_code(tmp_path, monkeypatch, tiny_bert, tiny_text_args):
    """LightningCLI applies a checkpoint's hyperparameters over the config; ``trust_remote_code`` is exempt."""
    import lightning as L

    from llm_course.text import module

    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": L.__version__,
                "hyper_parameters": {"_class_path": "llm_course.text.TextClassifier", "model_name_or_path": tiny_bert,
                                     "labels": ["neg", "pos"], "trust_remote_code": True}}, hostile)  # fmt: skip
    seen = []

    class Stop(Exception):
        pass

    def spy(cls, name, flag, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise Stop("stopped at the first model load")

    monkeypatch.setattr(module, "from_pretrained", spy)
    args = ["test", "--config", CONFIGS / "imdb.yaml", *tiny_text_args, f"--trainer.default_root_dir={tmp_path}",
            f"--ckpt_path={hostile}"]  # fmt: skip
    for flag, expected in (([], False), (["--model.init_args.trust_remote_code=true"], True)):
        seen.clear()
        with pytest.raises(Exception, match="stopped at the first model load"):  # jsonargparse may wrap it
            run_cli(*args, *flag)
        assert seen == [expected]


def test_progress_totals_count_batches_under_accumulation_and_max_steps(tmp_path, capsys):
    own = tmp_path / "progress.yaml"
    own.write_text("trainer:\n  callbacks:\n    - class_path: llm_course.callbacks.ProgressLog\n"
                   "      init_args:\n        interval: 0.0\n")  # fmt: skip
    run_cli("fit", "--config", LINREG, "--config", own, f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_model_summary=false", "--trainer.max_steps=5", "--trainer.accumulate_grad_batches=2")
    train = [x for x in capsys.readouterr().err.splitlines() if x.startswith("train epoch 0 ")]
    assert [x.split("batch ")[1].split()[0] for x in train] == [f"{i}/10" for i in range(1, 11)]
    assert "step 5/5" in train[-1] and "ETA 0m00s" in train[-1]


def test_generate_chat_and_serve_import_neither_lightning_nor_training_code(constant_llama):
    printed = fresh_python(f"""
        import sys
        from llm_course.cli import main
        main(["generate", "--prompt", "Hi", "--model", {constant_llama!r}, "--device", "cpu", "--temperature", "0",
              "--max_new_tokens", "2"])
        import llm_course.inference.commands, llm_course.inference.serve, llm_course.inference.webui
        heavy = [m for m in ("lightning", "llm_course.training", "llm_course.trainer_cli", "llm_course.sft.module")
                 if m in sys.modules]
        print("after-generate", heavy)
    """)
    assert "ok ok" in printed and "after-generate []" in printed
