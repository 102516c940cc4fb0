"""Loading a chat model for inference in any of the course's forms, through Module 6's loaders."""

import json
from pathlib import Path
from typing import Any

import torch

from llm_course.errors import ConfigError, MissingFileError

ADAPTER_CONFIG = "adapter_config.json"
# weight format → (Module 6's quantization, dtype of the unquantized layers): what GenerationEngine.load accepts.
# fp16 is a GPU format (a CPU has no fp16 matrix units); int8/nf4 layers compute in bf16.
WEIGHT_FORMATS: dict[str, tuple[str, str]] = {
    "fp32": ("none", "float32"),
    "bf16": ("none", "bfloat16"),
    "fp16": ("none", "float16"),
    "int8": ("int8", "float32"),
    "nf4": ("nf4", "float32"),
}


def pick_device(device: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU; anything else as given, checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"--device={device!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device={device!r}: this machine has no CUDA device; use --device=cpu (or auto)")
    return chosen


def is_adapter(folder: str) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_base(adapter: str) -> str:
    """The base model an adapter folder was trained on (``base_model_name_or_path`` of its config)."""
    config = Path(adapter) / ADAPTER_CONFIG
    if not config.is_file():
        raise MissingFileError(
            f"--adapter={adapter!r}: {config} does not exist; point it at the adapter/ folder of a LoRA run "
            "(llm-course fit --config configs/sft_lora.yaml writes <run>/adapter)"
        )
    return json.loads(config.read_text())["base_model_name_or_path"]


def load_model(
    engine_cls: type, model: str, adapter: str | None, weights: str, device: str, trust_remote_code: bool
) -> Any:
    """Build ``engine_cls(model, tokenizer, name, weights)`` from a model or adapter, in the asked weight format.

    fp32/bf16 with an adapter: the adapter is merged into the weights it was trained against (Module 6's
    ``load_base_as_trained``: dequantized NF4 after QLoRA), so the merged model computes what training computed.
    int8/nf4: the adapter stays a separate LoRA layer on the quantized base, as in QLoRA training.
    """
    from llm_course.sft.lora import load_base_as_trained, load_causal_lm, read_base_record
    from llm_course.sft.prompts import load_tokenizer

    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"--weights={weights!r} is not one of: {', '.join(WEIGHT_FORMATS)}")
    if adapter is None and Path(model).is_dir() and is_adapter(model):
        model, adapter = adapter_base(model), model
    base, where = model, pick_device(device)
    quantization, dtype = WEIGHT_FORMATS[weights]
    if adapter is not None and quantization == "none":
        net = load_base_as_trained(base, read_base_record(adapter), dtype, trust_remote_code)
        net = _with_adapter(net, adapter).merge_and_unload()
    else:
        net = fused_4bit_kernel_where_it_fits(load_causal_lm(base, quantization, dtype, where,
                                                             trust_remote_code=trust_remote_code))  # fmt: skip
        if adapter is not None:
            net = _with_adapter(net, adapter)
    if quantization == "none":
        net = net.to(where)
    tokenizer_source = adapter if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file() else base
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code, "--model")
    name = base if adapter is None else f"{base}+{Path(adapter).name}"
    return engine_cls(net, tokenizer, name=name, weights=weights)


def _with_adapter(net: torch.nn.Module, adapter: str) -> Any:
    from peft import PeftModel

    adapter_base(adapter)  # a clear error for a folder that is not an adapter
    return PeftModel.from_pretrained(net, adapter)


def fused_4bit_kernel_where_it_fits(net: torch.nn.Module) -> torch.nn.Module:
    """Keep bitsandbytes' fused CPU 4-bit kernel (AVX512-BF16: nf4 decodes fastest with it, notes/07) only for layers
    whose input width is a multiple of the quantization block: its weight repacking reshapes the block scales to
    ``(out, in // blocksize)`` and fails for narrower layers (``shape '[32, 0]' is invalid``, notes/debug_log.md)."""
    for module in net.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            state = getattr(module.weight, "quant_state", None)
            if module.in_features % (state.blocksize if state is not None else 64):
                module.support_avx512bf16_for_cpu = False
    return net
