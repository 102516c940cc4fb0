"""Module 4's plain training loop and ``llm-course bench precision``, on a tiny BERT and tiny data written here."""

import json
import math
import statistics

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from conftest import CONFIGS, review_rows, run_cli, write_jsonl
from llm_course.errors import ConfigError, NonFiniteError
from llm_course.optimization.bench import compile_summary
from llm_course.optimization.plain_loop import precision_plan, train_loop
from llm_course.optimization.rows import Row, plan_rounds, timing

TEXTS = ["a great film", "dull", "I loved every minute of it", "awful acting", "fine", "a waste", "brilliant", "meh"]


def tiny_net(folder: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the new head's weights
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, hidden_dropout_prob=0.0,
                                                              attention_probs_dropout_prob=0.0)  # fmt: skip


def batches(folder: str, size: int) -> list[dict[str, torch.Tensor]]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    rows = [{"input_ids": tokenizer(t)["input_ids"], "labels": i % 2} for i, t in enumerate(TEXTS)]
    return [collate(rows[i : i + size]) for i in range(0, len(rows), size)]


def test_precision_plan_names_the_lightning_recipes():
    assert precision_plan("32-true") == precision_plan("32-true", "cpu")
    mixed, true = precision_plan("bf16-mixed"), precision_plan("bf16-true")
    assert (mixed.param_dtype, mixed.autocast_dtype, mixed.grad_scaler) == (torch.float32, torch.bfloat16, False)
    assert (true.param_dtype, true.autocast_dtype) == (torch.bfloat16, None)
    assert precision_plan("16-mixed", "cuda").grad_scaler and not precision_plan("16-true", "cuda").grad_scaler
    with pytest.raises(ConfigError, match="16-mixed needs a CUDA device"):
        precision_plan("16-mixed", "cpu")
    with pytest.raises(ConfigError, match="'fp8' is not one of"):
        precision_plan("fp8")


def test_accumulated_micro_batches_give_the_larger_batch_update(tiny_bert):
    def trained(size: int, k: int) -> torch.nn.Module:
        net = tiny_net(tiny_bert)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)  # the update is the gradient itself: compared directly
        result = train_loop(net, batches(tiny_bert, size), opt, accumulate_grad_batches=k, gradient_clip_val=1.0)
        assert (result.steps, result.samples) == (1, 8)
        return net

    big, accumulated, untouched = trained(8, 1), trained(4, 2), tiny_net(tiny_bert)
    moved = 0
    for (name, a), b, c in zip(big.state_dict().items(), accumulated.state_dict().values(),
                               untouched.state_dict().values(), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.equal(a, c)
    assert moved > 10  # the step changed the weights


def test_the_norm_reported_is_the_pre_clip_norm_and_the_update_is_clipped(tiny_bert):
    batch = batches(tiny_bert, 8)
    reference = tiny_net(tiny_bert)
    logits = reference(input_ids=batch[0]["input_ids"], attention_mask=batch[0]["attention_mask"]).logits
    torch.nn.functional.cross_entropy(logits, batch[0]["labels"]).backward()
    true_norm = float(torch.cat([p.grad.reshape(-1) for p in reference.parameters()]).norm())  # one long vector
    net = tiny_net(tiny_bert)
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    result = train_loop(net, batch, opt, gradient_clip_val=true_norm / 10)
    step = math.sqrt(sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(net.parameters(), before, strict=True)))
    assert result.grad_norms[0] == pytest.approx(true_norm, rel=1e-4)  # the norm before clipping
    assert step == pytest.approx(true_norm / 10, rel=1e-3)  # SGD with lr 1 moves by the clipped gradient


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_value_stops_before_the_optimizer_step(tiny_bert, where):
    net = tiny_net(tiny_bert)
    if where == "loss":
        torch.nn.init.constant_(net.classifier.bias, math.nan)
    else:
        net.classifier.weight.register_hook(lambda g: g * math.inf)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    with pytest.raises(NonFiniteError, match="at optimizer step 1") as err:
        train_loop(net, batches(tiny_bert, 4), opt)
    assert ("training loss" if where == "loss" else "gradient norm") in str(err.value) and err.value.step == 1
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]) or value.isnan().any(), name  # untouched (the NaN bias was set)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: fp16 autocast with a GradScaler")
def test_fp16_grad_scaler_skips_an_inf_step_on_cuda(tiny_bert):
    net = tiny_net(tiny_bert).cuda()
    hook = net.classifier.weight.register_hook(lambda g: g * math.inf)
    before = net.classifier.weight.detach().clone()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    result = train_loop(net, batches(tiny_bert, 8), opt, device="cuda", precision="16-mixed", gradient_clip_val=1.0)
    assert result.skipped_steps == 1 and torch.equal(net.classifier.weight, before)
    hook.remove()
    result = train_loop(net, batches(tiny_bert, 8), opt, device="cuda", precision="16-mixed", gradient_clip_val=1.0)
    assert result.skipped_steps == 0 and not torch.equal(net.classifier.weight, before)


def test_rounds_alternate_the_pair_and_repeat_every_row():
    names = [[r.name for r in rnd] for rnd in plan_rounds(["32-true", "bf16-mixed"], repeats=2, pair_repeats=3)]
    assert names == [["lightning 32-true", "plain 32-true", "lightning bf16-mixed"]] * 2 + [
        ["lightning 32-true", "plain 32-true"]]  # fmt: skip
    assert Row("lightning", "bf16-true", True).name == "lightning bf16-true compiled"


def test_rows_a_cpu_cannot_run_are_named_with_the_reason_and_repeats_skip_validation(tmp_path):
    from llm_course.optimization.rows import cannot_run, lightning_command, plain_command, task_settings

    assert "needs a CUDA GPU" in cannot_run("16-mixed", cuda=False, explicit=True)
    assert "GPU row" in cannot_run("16-true", cuda=False, explicit=False)
    assert cannot_run("16-true", cuda=False, explicit=True) is None  # asked for by name: it runs
    assert cannot_run("bf16-mixed", cuda=False, explicit=False) is None
    c = {**task_settings(str(CONFIGS / "imdb.yaml")), "task_config": "configs/imdb.yaml", "train_file": "t.jsonl",
         "steps": 5, "batch_size": 4, "samples": 20, "max_length": 32, "val_fraction": 0.1, "seed": 1, "cuda": False,
         "validate": False}  # fmt: skip
    assert (c["lr"], c["warmup_ratio"], c["gradient_clip_val"], c["dropout"]) == (1e-4, 0.06, 1.0, 0.0)
    lightning = lightning_command(Row("lightning", "bf16-true"), c, tmp_path / "r.json")
    assert "--trainer.limit_val_batches=0" in lightning and "--trainer.precision=bf16-true" in lightning
    spec = json.loads(plain_command(Row("plain", "32-true"), c, tmp_path / "r.json")[-2])
    assert spec["validate"] is False and spec["max_train_samples"] == 20 and spec["label_names"] == ["neg", "pos"]
    # the plain loop does the Trainer's work: imdb.yaml's frozen token table travels with the spec
    assert c["freeze_embeddings"] is True and spec["freeze_embeddings"] is True


def test_timing_leaves_the_warm_up_out_and_compile_time_is_the_extra_overhead():
    eager = {"samples": 40, "step_end_seconds": [1.0, 2.0, 3.0, 4.0, 5.0]}  # 8 samples a step, 1 s each
    compiled = {"samples": 40, "step_end_seconds": [30.0, 30.5, 31.0, 31.5, 32.0]}  # 30 s first step, then 0.5 s
    t = timing(eager, warmup_steps=1)
    assert t["samples_per_sec"] == pytest.approx(8.0) and t["overhead_seconds"] == pytest.approx(0.0)
    c = timing(compiled, warmup_steps=1)
    assert c["samples_per_sec"] == pytest.approx(16.0) and c["first_step_seconds"] == 30.0
    assert c["overhead_seconds"] == pytest.approx(32.0 - 5 * 0.5)
    summary = {"lightning 32-true": {"status": "ok", **t, "val_f1": 0.8},
               "lightning 32-true compiled": {"status": "ok", **c, "val_f1": 0.8}}  # fmt: skip
    out = compile_summary(summary, Row("lightning", "32-true", True), asked=True)
    assert out["steady_speedup"] == pytest.approx(2.0) and out["compile_seconds"] == pytest.approx(29.5)
    assert out["break_even_steps"] == 59  # 29.5 s / 0.5 s saved per step


def test_a_nan_stop_is_recorded_by_both_loops(tmp_path, monkeypatch, tiny_bert):
    """lr 1e30 sends the weights to ~1e30 at the first step that has a learning rate, and the next loss is NaN:
    both loops stop at the same step, and the record says so (the row's result, not a crash)."""
    from llm_course.optimization.probes import plain_row

    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path / "cache"))
    train = write_jsonl(tmp_path / "train.jsonl", review_rows(40))
    common = {"train_file": str(train), "model_name_or_path": tiny_bert, "label_names": ["neg", "pos"],
              "val_fraction": 0.2, "max_train_samples": 16, "batch_size": 4, "max_length": 32, "lr": 1e30,
              "warmup_ratio": 0.06, "max_steps": 4}  # fmt: skip
    plain = plain_row(common, tmp_path / "plain.json")
    record = tmp_path / "lightning.json"
    callback = {"class_path": "llm_course.optimization.probes.RunRecord", "init_args": {"path": str(record)}}
    with pytest.raises(SystemExit):
        run_cli("fit", "--config", CONFIGS / "imdb.yaml", f"--model.init_args.model_name_or_path={tiny_bert}",
                "--model.init_args.optimizer.init_args.lr=1e30", f"--data.init_args.train_file={train}",
                "--data.init_args.val_fraction=0.2", "--data.init_args.max_train_samples=16",
                "--data.init_args.batch_size=4", "--data.init_args.max_length=32", "--trainer.max_steps=4",
                "--trainer.precision=32-true",  # the plain row's default
                "--trainer.enable_checkpointing=false", "--trainer.logger=false", "--trainer.num_sanity_val_steps=0",
                f"--trainer.default_root_dir={tmp_path}", f"--trainer.callbacks={json.dumps([callback])}")  # fmt: skip
    lightning = json.loads(record.read_text())
    for record in (plain, lightning):
        assert record["status"] == "non_finite" and record["non_finite"], record
        assert "training loss is nan" in record["reason"]
    assert plain["stopped_at_step"] == lightning["stopped_at_step"] == 3  # step 1 has lr 0 (warm-up), step 2 blows up
    assert len(lightning["losses"]) == 2 and math.isfinite(lightning["losses"][-1])


@pytest.mark.slow
def test_bench_precision_writes_every_row_and_the_figure(tmp_path, monkeypatch, tiny_bert):
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny ops: a second thread on a busy machine only waits
    train = write_jsonl(tmp_path / "train.jsonl.gz", review_rows(48))
    out = tmp_path / "bench"
    run_cli("bench", "precision", "--train_file", train, "--output_dir", out, "--model_name_or_path", tiny_bert,
            "--task_config", CONFIGS / "imdb.yaml", "--steps", 4, "--batch_size", 4, "--max_length", 32,
            "--warmup_steps", 1, "--val_fraction", 0.25, "--pair_repeats", 1, "--compile", "false",
            "--precisions", '["32-true", "bf16-true", "16-mixed"]')  # fmt: skip
    report = json.loads((out / "precision.json").read_text())
    png = (out / "module4_amp_vs_fp32.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000 and (out / "precision.png").read_bytes() == png
    rows = report["rows"]
    assert list(rows) == ["lightning 32-true", "lightning bf16-true", "lightning 16-mixed", "plain 32-true"]
    assert report["order"] == ["lightning 32-true", "plain 32-true", "lightning bf16-true"]
    assert rows["lightning 16-mixed"]["status"] == "skipped"  # listed with the reason, not dropped
    assert "needs a CUDA GPU" in rows["lightning 16-mixed"]["reason"]
    emulated = not report["hardware"]["bf16_in_hardware"]  # then bf16-true runs 3 steps (--emulated_bf16=fewer)
    for name in ("lightning 32-true", "lightning bf16-true", "plain 32-true"):
        row = rows[name]
        steps = 3 if emulated and name == "lightning bf16-true" else 4
        assert row["status"] == "ok" and not row["non_finite"], (name, row.get("reason"))
        assert row["steps"] == steps and row["emulated_bf16"] == (steps == 3)
        assert row["samples_per_sec"] > 0 and row["peak_mem_mb"] > 0 and row["memory"] == "rss_above_idle"
        assert 0 <= row["val_f1"] <= 1 and 0 < row["val_loss"] < 5 and len(row["losses"]) == steps
        assert row["runs"][0]["samples"] == 4 * steps and len(row["runs"][0]["step_end_seconds"]) == steps
    # The two loops did the same work: the same losses step by step, the same validation score.
    assert report["lightning_vs_plain_loss_max_abs_diff"] < 1e-5
    assert rows["lightning 32-true"]["val_loss"] == pytest.approx(rows["plain 32-true"]["val_loss"], abs=1e-5)
    assert rows["lightning bf16-true"]["losses"] != rows["lightning 32-true"]["losses"]  # bf16 did change the math
    ratio = rows["lightning 32-true"]["samples_per_sec"] / rows["plain 32-true"]["samples_per_sec"]
    assert report["lightning_vs_plain"] == pytest.approx(ratio, rel=1e-2)
    assert report["lightning_vs_plain_runs"] == [pytest.approx(statistics.median([ratio]), rel=1e-2)]
    assert report["lightning_vs_plain_target"] == 0.95
    assert report["compile"] == {"status": "skipped", "reason": "--compile=false"}
    assert report["hardware"]["device"] == "cpu" and "bf16_in_hardware" in report["hardware"]
    assert report["settings"]["samples"] == 16 and report["settings"]["lr"] == 1e-4
    assert {"machine", "versions", "command"} <= set(report)


def test_a_row_that_fails_is_listed_with_its_reason_and_the_report_still_written(tmp_path, monkeypatch):
    import llm_course.distributed.bench

    def fail(command, env, log, timeout):
        raise RuntimeError(f"{' '.join(command)}\nexit status 1; the end of {log}:\nerror: the model cannot be loaded")

    monkeypatch.setattr(llm_course.distributed.bench, "run_process", fail)
    train = write_jsonl(tmp_path / "train.jsonl", review_rows(8))
    run_cli("bench", "precision", "--train_file", train, "--output_dir", tmp_path, "--task_config",
            CONFIGS / "imdb.yaml", "--precisions", '["32-true", "bf16-mixed"]', "--pair_repeats", 2)  # fmt: skip
    report = json.loads((tmp_path / "precision.json").read_text())
    assert report["order"] == ["lightning 32-true", "plain 32-true", "lightning bf16-mixed", "lightning 32-true",
                               "plain 32-true"]  # fmt: skip
    for name in ("lightning 32-true", "plain 32-true", "lightning bf16-mixed"):
        row = report["rows"][name]
        assert row["status"] == "error" and row["reason"] == "error: the model cannot be loaded"
        assert row["val_f1"] is None and "samples_per_sec" not in row
    assert report["lightning_vs_plain"] is None and report["lightning_vs_plain_runs"] == []
    assert report["compile"] == {"status": "skipped", "reason": "no eager row finished"}
    assert (tmp_path / "module4_amp_vs_fp32.png").stat().st_size > 10_000


def fake_record(row: Row, c: dict, validate: bool) -> dict:
    """A run's record as the probes write it, without running: an fp32 step takes 1 s, an emulated bf16 one 20 s,
    and starting, loading and validating 2 s."""
    step = 20.0 if row.precision.startswith("bf16") else 1.0
    ends = [step * (i + 1) for i in range(c["steps"])]
    record = {"status": "ok", "non_finite": False, "samples": c["steps"] * c["batch_size"], "step_end_seconds": ends,
              "losses": [0.69] * c["steps"], "peak_mem_mb": 100.0, "memory": "rss_above_idle",
              "val": {"val/f1": 0.5, "val/loss": 0.69, "val/acc": 0.5} if validate else {},
              "wall_seconds": ends[-1] + 2.0}  # fmt: skip
    return {**record, "timing": timing(record, c["warmup_steps"])}


@pytest.mark.parametrize("mode", ["fewer", "skip", "full", "in hardware"])
def test_emulated_bf16_rows_run_fewer_steps_say_why_and_the_duration_is_estimated(tmp_path, monkeypatch, capsys,
                                                                                 mode):  # fmt: skip
    import llm_course.optimization.bench as bench

    ran = []

    def run_row(row, c, runs_dir, index, timeout, validate=True):
        ran.append((row.name, c["steps"], c["samples"]))
        runs_dir.mkdir(parents=True, exist_ok=True)
        return fake_record(row, c, validate)

    def no_probe():
        raise AssertionError("the matmul probe runs only where bf16 is emulated")

    in_hardware = mode == "in hardware"
    monkeypatch.setattr(bench, "run_row", run_row)
    cpu = {"device": "cpu", "bf16_in_hardware": in_hardware, "threads": 1}  # which CPU this is, decided here
    monkeypatch.setattr(bench, "hardware", lambda cuda: cpu)
    monkeypatch.setattr(bench, "bf16_matmul_slowdown", no_probe if in_hardware else lambda: 10.0)
    train = write_jsonl(tmp_path / "train.jsonl", review_rows(8))
    run_cli("bench", "precision", "--train_file", train, "--output_dir", tmp_path, "--task_config",
            CONFIGS / "imdb.yaml", "--steps", 8, "--warmup_steps", 1, "--pair_repeats", 1, "--compile", "false",
            "--precisions", '["32-true", "bf16-mixed", "bf16-true"]',
            *(() if in_hardware else ("--emulated_bf16", mode)))  # fmt: skip
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "precision.json").read_text())
    rows, bf16_names = report["rows"], ["lightning bf16-mixed", "lightning bf16-true"]
    for name in ("lightning 32-true", "plain 32-true"):
        assert rows[name]["steps"] == 8 and rows[name]["emulated_bf16"] is False and "steps_reason" not in rows[name]
    bf16_steps = {"fewer": 3, "full": 8, "in hardware": 8}.get(mode)  # fewer: max(warm-up + 2, 8 / 4)
    runs = [("lightning 32-true", 8), ("plain 32-true", 8)] + [(n, bf16_steps) for n in bf16_names if bf16_steps]
    assert ran == [(name, steps, steps * 16) for name, steps in runs]  # one epoch of those steps: it validates
    assert out.index("bench precision: ") < out.index("lightning 32-true: 16.00 samples/s")  # the plan comes first
    if in_hardware:
        assert all(not rows[n]["emulated_bf16"] and rows[n]["steps"] == 8 for n in bf16_names)
        assert "bf16 is emulated" not in out and report["settings"]["emulated_bf16_steps"] is None
        assert "time estimate: about 40 s in all" in out  # 4 runs × (2 s + 8 steps × 1 s)
        return
    assert "bf16 is emulated on this CPU (no AVX512-BF16/AMX units): a bf16 matmul took 10.0x" in out
    assert "lightning bf16-mixed, lightning bf16-true " in out
    assert report["hardware"]["bf16_matmul_slowdown"] == 10.0 and report["settings"]["emulated_bf16"] == mode
    for name in bf16_names:
        row = rows[name]
        assert row["emulated_bf16"] is True and row["steps_reason"].startswith("bf16 is emulated on this CPU")
    if mode == "skip":
        assert all(rows[n]["status"] == "skipped" and rows[n]["steps"] is None for n in bf16_names)
        reason = rows["lightning bf16-true"]["reason"]
        assert "--emulated_bf16=skip" in reason and rows["lightning bf16-true"]["steps_reason"] == reason
        assert "time estimate: about 20 s in all" in out  # 2 fp32 runs: 2 × (2 s + 8 steps × 1 s)
        return
    row = rows["lightning bf16-true"]
    assert row["status"] == "ok" and len(row["losses"]) == bf16_steps and row["samples_per_sec"] == 0.8
    assert report["settings"]["emulated_bf16_steps"] == bf16_steps
    if mode == "fewer":
        assert "3 of 8 steps (--emulated_bf16=fewer)" in row["steps_reason"] and "run 3 of 8 steps" in out
        # after the first run: 4 × 2 s + 2 × 8 fp32 steps + 2 × 3 bf16 steps counted 10x (the probe) = 84 s;
        # after the first bf16 row, whose step took 20x an fp32 one: 8 + 16 + 120 s = 2 min
        assert "time estimate: about 84 s in all" in out and "counted 10.0x, from the matmul probe" in out
        assert "time estimate revised: about 2 min in all" in out and "counted 20.0x, as measured" in out
        # the figure marks the emulated rows: hatched bars, "emulated bf16, 3 steps" under them
        fig = bench.figure(rows, {n: Row(r["loop"], r["precision"], r["compile"]) for n, r in rows.items()}, report)
        marked = [n in bf16_names for n in rows]
        assert [bar.get_hatch() == "//" for bar in fig.axes[0].patches] == marked
        assert [t.get_text().endswith("emulated bf16, 3 steps") for t in fig.axes[0].get_xticklabels()] == marked
    else:
        assert row["steps_reason"].endswith("all 8 steps (--emulated_bf16=full)") and "run all 8 steps" in out
        assert "time estimate: about 3 min in all" in out  # 8 s + 16 s + 2 × 8 steps × 10 s = 184 s


def test_the_matmul_probe_gives_a_ratio():
    from llm_course.optimization.emulated import bf16_matmul_slowdown

    ratio = bf16_matmul_slowdown(seconds=0.01)
    assert math.isfinite(ratio) and ratio > 0
