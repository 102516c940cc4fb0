"""Module 3: text sources in every format, tokenization, batching, metrics, and the HF save round trip."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CONFIGS, load_state, review_rows, run_dir, write_jsonl
from llm_course.errors import AssetError, ConfigError, MissingFileError
from llm_course.reports import classification_report
from llm_course.text import TextClassificationDataModule, TextClassifier
from llm_course.text.module import dropout_keys
from llm_course.text.sampling import LengthGroupedSampler, SortedSampler
from llm_course.trainer_cli import CourseCLI

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path / "cache"))


def _write(tmp_path, fmt: str, rows: list[dict]) -> str:
    path = tmp_path / f"data.{fmt}"
    if fmt in ("jsonl", "jsonl.gz"):
        write_jsonl(path, rows)
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return str(path)


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "csv", "parquet"])
def test_local_files_in_every_format(tmp_path, fmt, tiny_bert):
    rows = [{"review": r["text"], "sentiment": ["neg", "pos"][r["label"]]} for r in review_rows(40)]
    dm = TextClassificationDataModule(
        model_name_or_path=tiny_bert, train_file=_write(tmp_path, fmt, rows), text_column="review",
        label_column="sentiment", val_fraction=0.25,
    )  # fmt: skip
    dm.setup("fit")
    assert dm.label_names == ["neg", "pos"]  # string labels, sorted
    assert len(dm.splits["train"]) == 30 and len(dm.splits["validation"]) == 10
    labels = list(dm.splits["train"]["labels"]) + list(dm.splits["validation"]["labels"])
    assert sorted(labels) == [0] * 20 + [1] * 20


def test_aclimdb_layout(tmp_path, tiny_bert):
    for split, n in (("train", 6), ("test", 4)):
        for label in ("neg", "pos"):
            folder = tmp_path / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(f"{label} review {i}")
    dm = TextClassificationDataModule(model_name_or_path=tiny_bert, aclimdb_dir=str(tmp_path), val_fraction=0.25)
    dm.setup("fit")
    assert dm.label_names == ["neg", "pos"]
    assert len(dm.splits["train"]) == 9 and len(dm.splits["validation"]) == 3 and len(dm.splits["test"]) == 8
    tok = dm.tokenizer
    first = dm.splits["test"][0]
    assert tok.decode(first["input_ids"], skip_special_tokens=True).startswith(["neg", "pos"][first["labels"]])


def test_wrong_column_and_missing_file_are_explained(tmp_path, tiny_bert):
    path = _write(tmp_path, "jsonl", review_rows(8))
    with pytest.raises(
        ConfigError, match=r"data.text_column='body' is not a column of the train split; columns: \['text', 'label'\]"
    ):
        TextClassificationDataModule(model_name_or_path=tiny_bert, train_file=path, text_column="body").setup("fit")
    with pytest.raises(MissingFileError, match="data.train_file: .*nope.jsonl does not exist"):
        TextClassificationDataModule(model_name_or_path=tiny_bert, train_file=str(tmp_path / "nope.jsonl")).setup("fit")
    with pytest.raises(ConfigError, match="unsupported file type '.txt'"):
        TextClassificationDataModule(model_name_or_path=tiny_bert, train_file=str(tmp_path / "x.txt")).setup("fit")
    with pytest.raises(
        AssetError, match="data.dataset='stanfordnlp/imdb' could not be loaded.*--data.init_args.train_file"
    ):
        TextClassificationDataModule(model_name_or_path=tiny_bert, dataset="stanfordnlp/imdb").setup("fit")
    with pytest.raises(ConfigError, match=r"data.val_fraction=0 must lie in \(0, 1\)"):
        TextClassificationDataModule(model_name_or_path=tiny_bert, train_file=path, val_fraction=0)


def test_head_tail_truncation_keeps_both_ends(tiny_bert):
    text = "start " + " ".join(["middle"] * 300) + " finish"
    head = TextClassificationDataModule(model_name_or_path=tiny_bert, max_length=16, truncation="head")
    both = TextClassificationDataModule(
        model_name_or_path=tiny_bert, max_length=16, truncation="head_tail", head_fraction=0.5
    )
    tok = head.tokenizer
    h, b = head.encode([text])[0], both.encode([text])[0]
    assert len(h) == len(b) == 16
    assert h[0] == b[0] == tok.cls_token_id and h[-1] == b[-1] == tok.sep_token_id
    assert tok.decode(h[1:-1]).split()[0] == "start" and "finish" not in tok.decode(h)
    assert tok.decode(b[1:-1]).split()[0] == "start" and tok.decode(b[1:-1]).split()[-1] == "finish"
    assert head.encode(["short one"])[0] == tok("short one")["input_ids"]  # short texts are untouched


def test_tokenized_splits_are_cached(tmp_path, tiny_bert, monkeypatch):
    path = _write(tmp_path, "jsonl", review_rows(20))
    TextClassificationDataModule(model_name_or_path=tiny_bert, train_file=path).setup("fit")
    monkeypatch.setattr(TextClassificationDataModule, "encode", lambda *a: pytest.fail("re-tokenized"))
    again = TextClassificationDataModule(model_name_or_path=tiny_bert, train_file=path)
    again.setup("fit")
    assert len(again.splits["train"]) == 18
    other = TextClassificationDataModule(model_name_or_path=tiny_bert, train_file=path, max_length=32)
    assert other.cache_path != again.cache_path  # a different setting gets its own cache entry


def test_length_grouped_batches_are_homogeneous_and_complete():
    lengths = torch.randint(5, 500, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=10, group_batches=20)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    batches = [order[i : i + 10] for i in range(0, 1000, 10)]
    padded = sum(10 * max(lengths[j] for j in b) for b in batches)
    random_padded = sum(10 * max(lengths[j] for j in range(i, i + 10)) for i in range(0, 1000, 10))
    assert padded < 0.7 * random_padded  # far less padding than random batches
    assert order == list(sampler)  # same epoch, same order
    sampler.set_epoch(1)
    assert order != list(sampler)
    assert [lengths[i] for i in SortedSampler(lengths)] == sorted(lengths, reverse=True)


def test_f1_and_confusion_matrix_on_hand_made_predictions(tiny_bert):
    model = TextClassifier(model_name_or_path=tiny_bert, labels=["neg", "pos"])
    target = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = torch.tensor([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])  # TP 3, FN 1, FP 2, TN 4
    logits = torch.nn.functional.one_hot(pred, 2).float()
    model.test_metrics.update(logits, target)
    model.test_confusion.update(logits, target)
    values = model.test_metrics.compute()
    precision, recall = 3 / 5, 3 / 4
    assert values["test/f1"][1].item() == pytest.approx(2 * precision * recall / (precision + recall))  # 0.6667
    assert values["test/acc"].item() == pytest.approx(0.7)
    cm = model.test_confusion.compute()
    assert cm.tolist() == [[4, 2], [1, 3]]
    report = classification_report(cm, ["neg", "pos"])
    assert "pos     0.6000  0.7500    0.6667        4" in report and "0.7000" in report


def test_saved_hf_folder_gives_the_checkpoint_logits(tmp_path, tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = review_rows(40)
    train, test = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "test.jsonl", rows[:8])
    args = ["--config", str(CONFIGS / "imdb.yaml"), f"--model.init_args.model_name_or_path={tiny_bert}",
            f"--data.init_args.train_file={train}", f"--data.init_args.test_file={test}", "--trainer.max_epochs=2",
            "--trainer.val_check_interval=1.0", "--trainer.precision=32-true", f"--trainer.default_root_dir={tmp_path}",
            *QUIET]  # fmt: skip
    cli = CourseCLI(["fit", *args])
    run = run_dir(tmp_path)
    hf = AutoModelForSequenceClassification.from_pretrained(run / "hf_model").eval()
    tok = AutoTokenizer.from_pretrained(run / "hf_model")
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    ckpt = TextClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt", map_location="cpu").eval()
    batch = tok(["a wonderful film", "a boring mess of a film"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = ckpt(batch["input_ids"], batch["attention_mask"])
        assert torch.equal(hf(**batch).logits, expected)
    assert not torch.equal(expected, torch.zeros_like(expected))
    assert cli.trainer.checkpoint_callback.best_model_score is not None

    predict = CourseCLI(["predict", *args, f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
                         '--data.init_args.predict_texts=["a wonderful film", "a boring mess of a film"]'])  # fmt: skip
    lines = [json.loads(x) for x in (run_dir(tmp_path) / "predictions.jsonl").read_text().splitlines()]
    assert [x["text"] for x in lines] == ["a wonderful film", "a boring mess of a film"]
    probs = expected.softmax(-1)
    assert [x["label"] for x in lines] == [["neg", "pos"][int(i)] for i in probs.argmax(-1)]
    assert np.allclose([x["score"] for x in lines], probs.max(-1).values.numpy(), atol=1e-4)
    assert predict.trainer.state.finished


def test_dropout_option_sets_every_dropout_probability(tiny_bert):
    ids = torch.randint(5, 1000, (2, 12))
    mask = torch.ones_like(ids)

    def two_train_passes(module: TextClassifier) -> tuple[torch.Tensor, torch.Tensor]:
        module.net.train()
        return module(ids, mask), module(ids, mask)

    kept = TextClassifier(tiny_bert, labels=["neg", "pos"])
    assert {k: getattr(kept.net.config, k) for k in dropout_keys(kept.net.config)} == {
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}  # fmt: skip
    first, second = two_train_passes(kept)
    assert not torch.equal(first, second)  # dropout active in training mode

    off = TextClassifier(tiny_bert, labels=["neg", "pos"], dropout=0.0)
    assert {k: getattr(off.net.config, k) for k in dropout_keys(off.net.config)} == {
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # fmt: skip
    first, second = two_train_passes(off)
    assert torch.equal(first, second)
    assert off.net.config.id2label == {0: "neg", 1: "pos"}

    with pytest.raises(ConfigError, match=r"model.init_args.dropout=1.5: must be in \[0, 1\)"):
        TextClassifier(tiny_bert, labels=["neg", "pos"], dropout=1.5)


def test_imdb_config_freezes_the_token_embeddings_and_trains_the_rest(tmp_path, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    rows = review_rows(24)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    CourseCLI(["fit", "--config", str(CONFIGS / "imdb.yaml"), f"--model.init_args.model_name_or_path={tiny_bert}",
               f"--data.init_args.train_file={train}", f"--trainer.default_root_dir={tmp_path}", *QUIET,
               "--trainer.max_steps=3", "--trainer.val_check_interval=1.0",
               "--data.init_args.batch_size=4"])  # fmt: skip
    pretrained = AutoModelForSequenceClassification.from_pretrained(tiny_bert).state_dict()
    trained = load_state(run_dir(tmp_path) / "checkpoints" / "last.ckpt")
    table = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(trained[f"net.{table}"], pretrained[table])  # frozen: exactly as pretrained
    for name in ("bert.embeddings.position_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight"):
        assert not torch.equal(trained[f"net.{name}"], pretrained[name])  # still trained

    module = TextClassifier(tiny_bert, labels=["neg", "pos"], freeze_embeddings=True)
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(module.net.get_input_embeddings().weight) not in in_optimizer
    assert len(in_optimizer) == sum(p.requires_grad for p in module.parameters()) == len(list(module.parameters())) - 1


def test_test_writes_metrics_report_and_confusion_matrix(tmp_path, tiny_bert):
    rows = review_rows(24)
    train, test = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "test.jsonl", rows[:10])
    args = ["--config", str(CONFIGS / "imdb.yaml"), f"--model.init_args.model_name_or_path={tiny_bert}",
            f"--data.init_args.train_file={train}", f"--data.init_args.test_file={test}",
            f"--trainer.default_root_dir={tmp_path}", *QUIET]  # fmt: skip
    CourseCLI(["fit", *args, "--trainer.max_epochs=1", "--trainer.val_check_interval=1.0"])
    CourseCLI(["test", *args, f"--ckpt_path={run_dir(tmp_path) / 'checkpoints' / 'best.ckpt'}"])
    run = run_dir(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.array(metrics["test/confusion_matrix"]).sum() == 10
    assert {"test/f1", "test/acc", "test/loss"} <= set(metrics)
    assert "neg" in (run / "classification_report.txt").read_text()
    assert (run / "confusion_matrix.png").is_file()


def test_bench_imdb_reports_f1_and_times(tmp_path, tiny_bert):
    from conftest import run_cli

    rows = review_rows(60)
    train, test = write_jsonl(tmp_path / "train.jsonl.gz", rows), write_jsonl(tmp_path / "test.jsonl", rows[:20])
    run_cli("bench", "imdb", f"--train_file={train}", f"--test_file={test}", f"--output_dir={tmp_path / 'out'}",
            f"--task_config={CONFIGS / 'imdb.yaml'}",
            f'--overrides=["--model.init_args.model_name_or_path={tiny_bert}", "--trainer.accelerator=cpu", '
            '"--data.init_args.val_fraction=0.2"]')  # fmt: skip
    report = json.loads((tmp_path / "out" / "imdb.json").read_text())
    assert report["test_samples"] == 20 and report["train_samples"] == 48 and report["val_samples"] == 12
    (tn, fp), (fn, tp) = report["confusion_matrix"]  # rows: true neg/pos; columns: predicted
    assert tn + fp + fn + tp == 20 and (tn + fp, fn + tp) == (10, 10)
    assert report["test_acc"] == pytest.approx((tn + tp) / 20, abs=1e-6)
    assert report["test_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0, abs=1e-6)  # positive class
    assert report["total_seconds"] >= report["train_seconds"] + report["test_seconds"] > 0
    # training throughput counts the training batches only; the old figure, over all of fit, is kept apart
    assert report["samples_trained"] == 48  # one epoch
    assert report["train_batch_seconds"] + report["val_seconds"] <= report["train_seconds"]
    assert report["train_samples_per_sec"] > report["fit_samples_per_sec"] > 0
    assert len(report["history"]) == 2  # val_check_interval 0.5
    assert report["settings"]["max_length"] == 128 and report["settings"]["truncation"] == "head_tail"
    assert report["settings"]["freeze_embeddings"] is True  # imdb.yaml's
    assert (tmp_path / "out" / "imdb.png").stat().st_size > 20_000


def test_training_clock_leaves_validation_out():
    import time

    import lightning as L

    from llm_course.text.bench import TrainingClock

    class SlowValidation(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            time.sleep(0.02)
            return self.w(batch["x"]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            time.sleep(0.25)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    rows = [{"x": torch.tensor([float(i)]), "labels": torch.tensor(i % 2)} for i in range(8)]
    loader = torch.utils.data.DataLoader(rows, batch_size=2)
    clock = TrainingClock()
    trainer = L.Trainer(max_epochs=1, val_check_interval=0.5, num_sanity_val_steps=2, limit_val_batches=2,
                        callbacks=[clock], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")  # fmt: skip
    start = time.perf_counter()
    trainer.fit(SlowValidation(), loader, loader)
    fit_seconds = time.perf_counter() - start
    assert clock.train_samples == 8
    # 4 batches of 0.02 s train; 2 validations of 2 batches of 0.25 s each (the sanity check's 0.5 s not counted)
    assert 0.08 <= clock.train_seconds < 0.25
    assert 1.0 <= clock.val_seconds < 1.45
    assert fit_seconds >= 1.5
