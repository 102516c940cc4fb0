"""Module 3: the tokenized cache is shared safely by parallel runs and notices edited source files."""

import os
import threading
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from conftest import review_rows, write_jsonl
from llm_course.text import TextClassificationDataModule
from llm_course.text.data import publish


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path / "cache"))


def test_two_writers_of_the_same_cache_both_succeed_and_tokenize_once(tmp_path, tiny_bert, monkeypatch):
    train = str(write_jsonl(tmp_path / "train.jsonl", review_rows(40)))
    modules = [TextClassificationDataModule(model_name_or_path=tiny_bert, train_file=train) for _ in range(2)]
    for dm in modules:
        dm.tokenizer  # noqa: B018  -- load both tokenizers first, so the writers start together
    encode, calls = TextClassificationDataModule.encode, []

    def slow_encode(self, texts):  # a window wide enough for the other writer to arrive meanwhile
        calls.append(len(texts))
        time.sleep(0.5)
        return encode(self, texts)

    monkeypatch.setattr(TextClassificationDataModule, "encode", slow_encode)
    start, errors = threading.Barrier(2), []

    def write(dm: TextClassificationDataModule) -> None:
        try:
            start.wait()
            dm.prepare_data()
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(dm,)) for dm in modules]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert calls == [36, 4]  # one writer tokenized train and validation; the other waited and reused them
    cache = modules[0].cache_path
    assert modules[1].cache_path == cache
    assert sorted(p.name for p in cache.parent.iterdir() if not p.name.endswith(".lock")) == [cache.name]
    splits = load_from_disk(str(cache))
    assert {k: len(v) for k, v in splits.items()} == {"train": 36, "validation": 4}
    for dm in modules:
        dm.setup("fit")
        assert dm.label_names == ["0", "1"] and len(dm.splits["train"]) == 36


def test_publishing_onto_a_complete_cache_keeps_it(tmp_path):
    target, tmp = tmp_path / "fingerprint", tmp_path / ".fingerprint-x.tmp"
    for folder, text in ((target, "first"), (tmp, "second")):
        folder.mkdir()
        (folder / "dataset_dict.json").write_text(text)
        (folder / "label_names.json").write_text("[]")
    publish(tmp, target)  # a writer that finished second, without the lock: no error, the first result stays
    assert (target / "dataset_dict.json").read_text() == "first"


def test_publishing_onto_an_incomplete_cache_replaces_it(tmp_path):
    target, tmp = tmp_path / "fingerprint", tmp_path / ".fingerprint-x.tmp"
    target.mkdir()
    (target / "dataset_dict.json").write_text("half")  # no label_names.json: never finished
    tmp.mkdir()
    (tmp / "dataset_dict.json").write_text("whole")
    (tmp / "label_names.json").write_text("[]")
    publish(tmp, target)
    assert (target / "dataset_dict.json").read_text() == "whole" and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fingerprint"]


def _aclimdb(root: Path) -> Path:
    for split in ("train", "test"):
        for label in ("neg", "pos"):
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(f"{label} review {i}")
    return root / "aclImdb"


def test_editing_one_review_changes_the_aclimdb_fingerprint(tmp_path, tiny_bert):
    root = _aclimdb(tmp_path)
    review = root / "train" / "pos" / "1_7.txt"
    dm = TextClassificationDataModule(model_name_or_path=tiny_bert, aclimdb_dir=str(tmp_path))
    folder_stat = os.stat(review.parent).st_mtime_ns
    before = dm.cache_path
    assert dm.cache_path == before  # stable while nothing changes

    stat = review.stat()
    review.write_text("pos review 1, a different text")  # the review's size changes, its folder's mtime does not
    os.utime(review.parent, ns=(folder_stat, folder_stat))
    after_size = dm.cache_path
    assert after_size != before

    review.write_text("pos review 1")  # the original size again, a new mtime
    os.utime(review, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    os.utime(review.parent, ns=(folder_stat, folder_stat))
    assert dm.cache_path not in (before, after_size)


def test_an_edited_review_is_tokenized_again(tmp_path, tiny_bert):
    root = _aclimdb(tmp_path)
    first = TextClassificationDataModule(model_name_or_path=tiny_bert, aclimdb_dir=str(tmp_path), val_fraction=0.25)
    first.setup("fit")
    review = root / "test" / "neg" / "0_2.txt"
    review.write_text("neg review 0 edited")
    again = TextClassificationDataModule(model_name_or_path=tiny_bert, aclimdb_dir=str(tmp_path), val_fraction=0.25)
    again.setup("fit")
    texts = [again.tokenizer.decode(x, skip_special_tokens=True) for x in again.splits["test"]["input_ids"]]
    assert "neg review 0 edited" in texts
