"""The asset resolver: embedded names resolve offline, hub ids fail with a message that says what to do."""

import json

import pytest
import torch

from llm_course.assets import AssetError, from_pretrained, resolve_model


def test_minilm_resolves_to_an_embedded_folder():
    folder = resolve_model("minilm")
    config = json.loads(open(f"{folder}/config.json").read())
    assert config["model_type"] == "bert" and config["num_hidden_layers"] == 6 and config["hidden_size"] == 384


def test_local_path_passes_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_unreachable_hub_names_the_asset_the_flag_and_the_embedded_alternative():
    with pytest.raises(AssetError) as exc:
        resolve_model("some-org/not-cached-model", flag="--model.init_args.model_name_or_path")
    msg = str(exc.value)
    assert "some-org/not-cached-model" in msg
    assert "--model.init_args.model_name_or_path" in msg
    assert "minilm" in msg and "smollm2-135m-instruct" in msg


def test_from_pretrained_loads_embedded_minilm():
    from transformers import AutoTokenizer

    tok = from_pretrained(AutoTokenizer, "minilm")
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]


@pytest.mark.slow
def test_smollm2_converts_once_to_a_saveable_folder_with_the_gguf_logits(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_course.assets import smollm2_gguf

    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path))
    folder = resolve_model("smollm2-135m-instruct")
    assert folder.startswith(str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    gguf = smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert tok.chat_template  # the instruct chat template survives the conversion
    mtime = (tmp_path / "smollm2-135m-instruct" / "config.json").stat().st_mtime
    assert resolve_model("smollm2-135m-instruct") == folder  # second call reuses the cache
    assert (tmp_path / "smollm2-135m-instruct" / "config.json").stat().st_mtime == mtime
