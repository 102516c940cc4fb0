"""``llm-course tour``: the whole tiny tour end to end (every module, tiny models), and a failing step that is
reported while the tour goes on."""

import json
import math
import re

import pytest

from conftest import review_rows, run_cli, write_jsonl
from llm_course.tour.command import STEPS, run_tour


@pytest.fixture(scope="module")
def tiny_tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLM_COURSE_CACHE", str(out / "cache"))
        results = run_tour(out, tiny=True)
    return out, {r.name: r for r in results}


@pytest.mark.slow
def test_the_tiny_tour_runs_every_module(tiny_tour):
    out, steps = tiny_tour
    assert list(steps) == list(STEPS)
    assert {n: r.status for n, r in steps.items()} == dict.fromkeys(STEPS, "ok"), {
        n: r.error for n, r in steps.items() if r.error
    }
    assert all(r.headline and r.seconds > 0 for r in steps.values())

    m1 = steps["m1_linreg"].metrics  # the hand loop and the Trainer take the same steps from the same weights
    assert m1["max_abs_diff_hand_vs_trainer"] < 1e-5 and m1["optimizer_steps"] == 3 * 25  # 800 rows, batch 32
    assert m1["test_r2"] > 0.5 and math.isfinite(m1["test_mse"])

    m2 = steps["m2_cnn"].metrics
    assert m2["test_digits"] == 500 and 0 <= m2["test_acc"] <= 1  # mnist-5k's own 10% test split
    m3 = steps["m3_text"].metrics
    assert m3["test_reviews"] == 64 and 0 <= m3["test_f1"] <= 1 and "rule-written" in m3["data"]

    m4 = steps["m4_training"].metrics  # 16 batches, 4 per optimizer step; clipped to 0.5
    assert (m4["batches"], m4["optimizer_steps"]) == (16, 4)
    assert m4["max_grad_norm_after_clip"] <= 0.5 + 1e-4 < m4["max_grad_norm_before_clip"]
    assert m4["precision"] in ("32-true", "bf16-mixed") and m4["precision_reason"]

    m5 = steps["m5_ddp"].metrics  # 800 rows, batch 32 per process: 13 steps on 2 processes, 25 on one
    assert (m5["steps_per_epoch_2_processes"], m5["steps_per_epoch_1_process"]) == (13, 25)
    assert m5["max_abs_diff_test_metrics"] <= 1e-5

    m6 = steps["m6_lora"].metrics
    assert m6["merge_max_abs_logit_diff"] < 1e-4 and 0 < m6["trainable_params"] < m6["total_params"]
    assert math.isfinite(m6["test_loss_before"]) and math.isfinite(m6["test_loss_after"])

    m7 = steps["m7_serve"].metrics
    assert m7["model_id"] == "merged:fp32" and m7["url"].startswith("http://127.0.0.1:")
    assert len(m7["replies"]) == m7["questions"] == 2 and m7["first_token_ms_best"] > 0
    onnx = steps["m7_onnx"].metrics
    assert onnx["fp32_max_abs_logit_diff"] <= 1e-4 and onnx["fp32_agreement"] == 1.0 and onnx["check_texts"] == 64
    assert onnx["size_mb"]["onnx_int8"] < onnx["size_mb"]["onnx_fp32"]

    m8 = steps["m8_rag"].metrics
    assert not m8["abstained"] and m8["evidence"] and m8["files"] == 1
    assert all(c.startswith("notes/04_training_optimization.md#") for c in m8["citations"]), m8["citations"]


@pytest.mark.slow
def test_the_tiny_tour_writes_a_self_contained_report(tiny_tour):
    out, steps = tiny_tour
    saved = json.loads((out / "tour.json").read_text())
    assert [s["status"] for s in saved["steps"]] == ["ok"] * len(STEPS) and saved["mode"] == "tiny"
    assert saved["machine"]["cpu_count"] and saved["versions"]["torch"]
    page = (out / "report.html").read_text()
    images = re.findall(r"<img alt='[^']+' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", page)
    assert len(images) == 6 and all(len(i) > 1000 for i in images)  # figures inline: no file beside the page needed
    assert "src='figures" not in page and all(r.title in page for r in steps.values())
    markdown = (out / "report.md").read_text()
    for name in ("m1_linreg", "m2_cnn", "m3_text", "m4_training", "m6_lora", "m7_onnx"):
        assert f"(figures/{name}.png)" in markdown and (out / "figures" / f"{name}.png").stat().st_size > 1000
    assert (out / "logs" / "m5_ddp.log").stat().st_size > 0


def test_a_failing_step_is_reported_and_the_tour_goes_on(tmp_path, capsys):
    out = tmp_path / "tour"
    with pytest.raises(SystemExit) as exc:
        run_cli("tour", "--output_dir", out, "--tiny", "true", "--imdb_dir", tmp_path / "no_such_dir",
                "--steps", "[m3_text, m7_onnx]")  # fmt: skip
    assert exc.value.code == 1
    printed = capsys.readouterr().out
    assert re.search(r"failed .* --imdb_dir .*no_such_dir: neither train\.jsonl", printed), printed
    assert re.search(r"skipped .* needs the Module 3 classifier from step m3_text", printed), printed
    assert "Traceback" not in printed and "Traceback" not in (out / "logs" / "m3_text.log").read_text()
    saved = json.loads((out / "tour.json").read_text())
    assert [(s["name"], s["status"]) for s in saved["steps"]] == [("m3_text", "failed"), ("m7_onnx", "skipped")]
    assert "failed" in (out / "report.html").read_text()


def test_unknown_steps_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli("tour", "--output_dir", tmp_path, "--steps", "[m9_agent]")
    assert exc.value.code == 1 and "--steps: ['m9_agent'] are not steps of the tour" in capsys.readouterr().err


def test_module_3_samples_the_imdb_files_it_is_given(tmp_path):
    """``--imdb_dir``: a seeded sample of the course's IMDb JSONL files, or of an aclImdb/ folder."""
    from llm_course.tour.reviews import text_files

    jsonl = tmp_path / "imdb"
    jsonl.mkdir()
    for split, n in (("train", 300), ("test", 150)):
        write_jsonl(jsonl / f"{split}.jsonl.gz", review_rows(n))
    train, test, source = text_files(tmp_path / "a", tiny=True, imdb_dir=str(jsonl))
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert len(rows) == 200 and len(test.read_text().splitlines()) == 100 and "IMDb" in source
    assert {r["label"] for r in rows} == {0, 1} and all(r["text"].endswith(tuple("0123456789")) for r in rows)

    acl = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for label in ("neg", "pos"):
            (acl / split / label).mkdir(parents=True)
            for i in range(60):
                (acl / split / label / f"{i}_1.txt").write_text(f"{label} review {i}")
    train, test, _ = text_files(tmp_path / "b", tiny=True, imdb_dir=str(tmp_path))  # the parent of aclImdb/ works
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert len(rows) == 120 and all(r["text"].startswith(("neg review", "pos review")) for r in rows)
    assert all(r["label"] == r["text"].startswith("pos") for r in rows) and len(test.read_text().splitlines()) == 100


def test_the_offline_reviews_are_balanced_labelled_and_seeded():
    from llm_course.tour.reviews import reviews

    rows = reviews(200, seed=1)
    assert rows == reviews(200, seed=1) != reviews(200, seed=2)
    assert sum(r["label"] for r in rows) == 100 and len({r["text"] for r in rows}) > 190
    verdicts = {1: ("I loved it.", "Highly recommended."), 0: ("Avoid it.", "Skip this one.")}
    assert all(not r["text"].endswith(verdicts[1 - r["label"]]) for r in rows)
