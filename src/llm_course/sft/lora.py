"""Building the network for Module 6: a causal LM, optionally quantized (bitsandbytes) and wrapped in LoRA (PEFT).

Plain functions, no Lightning: the benchmarks, the tests and the note call them directly.
"""

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from llm_course.assets import from_pretrained
from llm_course.errors import ConfigError, MissingFileError
from llm_course.sft.prompts import load_tokenizer

Quantization = Literal["none", "int8", "nf4", "fp4"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_LLAMA_STYLE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Which linear layers get an adapter, by ``config.model_type``. Anything else: every linear layer but the head.
LORA_PRESETS: dict[str, list[str]] = {
    "llama": _LLAMA_STYLE,
    "mistral": _LLAMA_STYLE,
    "qwen2": _LLAMA_STYLE,
    "qwen3": _LLAMA_STYLE,
    "gemma": _LLAMA_STYLE,
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # fused q/k/v, both output projections, the MLP's first layer
}


def quantization_config(quantization: Quantization, compute_dtype: str = "bfloat16", double_quant: bool = True) -> Any:
    """A ``BitsAndBytesConfig`` for ``int8``, ``nf4`` or ``fp4`` weights; ``None`` for ``none``.

    ``double_quant`` also quantizes the 4-bit blocks' scale factors (about 0.4 bit per weight saved).
    """
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization in ("nf4", "fp4"):
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization,
                                  bnb_4bit_compute_dtype=DTYPES[compute_dtype],
                                  bnb_4bit_use_double_quant=double_quant)  # fmt: skip
    raise ConfigError(f"model.quantization={quantization!r} is not one of: none, int8, nf4, fp4")


def load_causal_lm(
    name_or_path: str,
    quantization: Quantization = "none",
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    double_quant: bool = True,
    trust_remote_code: bool = False,
) -> nn.Module:
    """``AutoModelForCausalLM`` through the asset resolver; bitsandbytes weights when ``quantization`` is set.

    Quantized layers compute in ``dtype`` (``bfloat16`` unless told otherwise) and are placed on ``device`` at
    load time, as bitsandbytes requires.
    """
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype!r} is not one of: {', '.join(DTYPES)}")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if quantization != "none":
        compute = "bfloat16" if dtype == "float32" else dtype
        kwargs |= {"quantization_config": quantization_config(quantization, compute, double_quant),
                   "device_map": {"": torch.device(device)}, "dtype": DTYPES[compute]}  # fmt: skip
    return from_pretrained(AutoModelForCausalLM, name_or_path, "--model.init_args.model_name_or_path", **kwargs)


def linear_modules(model: nn.Module) -> list[str]:
    """Full names of the linear layers (incl. GPT-2's ``Conv1D`` and bitsandbytes layers)."""
    from transformers.pytorch_utils import Conv1D

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)]


def linear_layer_names(model: nn.Module) -> list[str]:
    """Distinct last-name parts of the linear layers, e.g. ``q_proj``."""
    return sorted({n.rsplit(".", 1)[-1] for n in linear_modules(model)})


def lora_targets(model: nn.Module, target_modules: list[str] | str = "auto") -> list[str] | str:
    """Resolve ``auto`` to the architecture's preset and check that every named target exists.

    Returns:
        Layer names for PEFT's ``target_modules`` (``"all-linear"`` for unknown architectures).

    Raises:
        ConfigError: a target matches no linear layer; the message lists the ones there are.
    """
    if target_modules == "auto":
        return LORA_PRESETS.get(getattr(model.config, "model_type", ""), "all-linear")
    if target_modules == "all-linear":
        return target_modules
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    available, full_names = linear_layer_names(model), linear_modules(model)
    # PEFT matches a target against the end of a module's name: q_proj, or self_attn.q_proj
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in full_names)]
    if missing:
        raise ConfigError(
            f"model.target_modules: {missing} match no linear layer of this "
            f"{getattr(model.config, 'model_type', type(model).__name__)} model. Available: {', '.join(available)} "
            "(or use auto for the architecture's preset, all-linear for every linear layer but the head)"
        )
    return targets


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: list[str] | str = "auto",
    init_lora_weights: bool = True,
) -> nn.Module:
    """Wrap ``model`` in PEFT LoRA: frozen base weights plus trainable updates ``B @ A`` scaled by ``alpha / r``.

    ``init_lora_weights=True`` starts with ``B = 0``, so the wrapped model computes exactly what the base
    model did; ``False`` draws random ``B`` (tests use it to make the update visible).
    """
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, target_modules)
    config = LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",  # Conv1D stores weights transposed
        init_lora_weights=init_lora_weights,
    )  # fmt: skip
    return get_peft_model(model, config)


def keep_4bit_training_kernels(net: nn.Module) -> nn.Module:
    """Stop bitsandbytes from switching a trainable network's 4-bit layers to its CPU inference kernel.

    On a CPU with AVX512-BF16, a ``Linear4bit`` run in eval mode without gradients (Lightning's sanity check and
    every validation) repacks its weights for a fused inference kernel, for good: later training steps take that
    kernel too, and it has no backward, so the gradients through the frozen layers come out wrong (layer 0's
    LoRA gradients changed by up to 0.07 on a 2-layer test model; notes/debug_log.md). Validation runs the plain
    4-bit kernel instead, and the weights keep the format training dequantizes.
    """
    for module in net.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes >= 0.48 Linear4bit
            module.support_avx512bf16_for_cpu = False
    return net


def build_network(
    model_name_or_path: str,
    finetune: str = "lora",
    quantization: Quantization = "none",
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    target_modules: list[str] | str = "auto",
    double_quant: bool = True,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
) -> nn.Module:
    """The network a fine-tuning run trains: the causal LM, quantized if asked, with LoRA adapters if asked.

    Quantized weights are placed on ``device`` by bitsandbytes; others load on the CPU and are moved by the
    caller (Lightning does it for training).
    """
    net = load_causal_lm(model_name_or_path, quantization, dtype, device, double_quant, trust_remote_code)
    keep_4bit_training_kernels(net)
    if finetune == "lora":
        if quantization != "none":
            from peft import prepare_model_for_kbit_training

            # norms and embeddings to fp32 for stable training; checkpointing set up the k-bit way if asked
            net = prepare_model_for_kbit_training(
                net, use_gradient_checkpointing=gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )  # fmt: skip
        net = add_lora(net, lora_r, lora_alpha, lora_dropout, target_modules)
    if gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        net.config.use_cache = False
    return net.train()  # from_pretrained returns eval mode, and Lightning keeps each submodule's mode


BASE_RECORD = "base_weights.json"  # in an adapter folder: how the frozen base was loaded for training
BaseWeights = Literal["trained", "original"]


def save_base_record(adapter_dir: str | Path, quantization: Quantization, dtype: str, double_quant: bool) -> None:
    """Record in ``adapter_dir`` how the frozen base was loaded for training, so that a merge can load it alike."""
    record = {"quantization": quantization, "dtype": dtype, "double_quant": double_quant}
    (Path(adapter_dir) / BASE_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def read_base_record(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The record :func:`save_base_record` wrote, or ``None`` for an adapter saved without one."""
    file = Path(adapter_dir) / BASE_RECORD
    return json.loads(file.read_text()) if file.is_file() else None


def describe_base(base: str, record: dict[str, Any] | None, base_weights: BaseWeights) -> str:
    """One line saying which weights of ``base`` an adapter is merged into."""
    if base_weights == "original":
        return f"the original (unquantized) weights of {base}, as asked (--base_weights original)"
    if record is None:
        return f"the original weights of {base} (the adapter has no {BASE_RECORD}: assumed trained on those)"
    if record["quantization"] == "none":
        return f"the {record['dtype']} weights of {base} (the weights the adapter was trained against)"
    quant = record["quantization"].upper()
    if quant != "INT8" and record.get("double_quant"):
        quant += " (double quantization)"
    return f"the dequantized {quant} weights of {base} (the weights the adapter was trained against)"


def load_base_as_trained(
    base: str, record: dict[str, Any] | None, dtype: str = "float32", trust_remote_code: bool = False
) -> nn.Module:
    """The base model with the weights an adapter was trained against, as plain ``dtype`` layers.

    With ``record`` (:func:`save_base_record`) it loads the base the way training did: quantized weights are
    quantized again (the same deterministic rounding) and dequantized, so each linear layer holds exactly the
    weights the 4/8-bit layer multiplied with; layers that stayed unquantized keep their training-time rounding.
    Without a record: the base as stored.
    """
    if record is None:
        return load_causal_lm(base, dtype=dtype, trust_remote_code=trust_remote_code)
    net = load_causal_lm(base, record["quantization"], record["dtype"], "cpu", record.get("double_quant", True),
                         trust_remote_code)  # fmt: skip
    if record["quantization"] != "none":
        net = net.dequantize(dtype=DTYPES[dtype])  # Linear4bit / Linear8bitLt → nn.Linear, quantization config gone
    return net.to(DTYPES[dtype])


def merge_adapter(
    adapter_dir: str,
    output_dir: str,
    base: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    base_weights: BaseWeights = "trained",
) -> str:
    """Fold a saved LoRA adapter into its base weights and save a plain HF folder with the tokenizer.

    The adapter learned a correction to the weights it was trained against. After QLoRA those are the NF4
    weights, dequantized, not the original ones; merging into the original weights would add the quantization
    error back (notes/06 measures the gap). ``base_weights="trained"`` therefore merges into the weights recorded
    in the adapter's ``base_weights.json`` (dequantized when they were quantized); the merged model computes what
    the quantized base + adapter computed, in full precision.

    Args:
        adapter_dir: a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
        output_dir: where the merged model goes (loadable with ``AutoModelForCausalLM.from_pretrained``).
        base: the base model; default: the one recorded in the adapter config.
        dtype: weight dtype of the merged model.
        trust_remote_code: allow a base model whose code lives on the hub.
        base_weights: ``trained``: the weights the adapter was trained against; ``original``: the unquantized base.

    Returns:
        A line saying what was merged into which weights, and where it went.

    Raises:
        MissingFileError: ``adapter_dir`` holds no adapter.
    """
    from peft import PeftModel

    config_file = Path(adapter_dir) / "adapter_config.json"
    if not config_file.is_file():
        raise MissingFileError(f"--adapter_dir: {config_file} does not exist; point it at a saved LoRA adapter")
    if base_weights not in ("trained", "original"):
        raise ConfigError(f"--base_weights={base_weights!r} is not one of: trained, original")
    base = base or json.loads(config_file.read_text())["base_model_name_or_path"]
    record = read_base_record(adapter_dir)
    net = load_base_as_trained(base, record if base_weights == "trained" else None, dtype, trust_remote_code)
    merged = PeftModel.from_pretrained(net, adapter_dir).merge_and_unload()
    merged.save_pretrained(output_dir)
    tokenizer_source = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").exists() else base
    load_tokenizer(tokenizer_source, trust_remote_code, "--base").save_pretrained(output_dir)
    return f"{adapter_dir} merged into {describe_base(base, record, base_weights)}: {dtype} model in {output_dir}"


def merge(
    adapter_dir: str,
    output_dir: str,
    base: str | None = None,
    dtype: str = "float32",
    base_weights: BaseWeights = "trained",
    trust_remote_code: bool = False,
) -> None:
    """``llm-course merge``: fold a LoRA adapter into its base model and save a plain Hugging Face folder.

    Args:
        adapter_dir: the adapter folder a LoRA run saved (``<run>/adapter``).
        output_dir: where the merged model and tokenizer go.
        base: base model name or folder; default: the one recorded in the adapter.
        dtype: float32, bfloat16 or float16.
        base_weights: ``trained`` (default): the weights the adapter was trained against, after QLoRA the
            NF4-dequantized ones; ``original``: the unquantized base weights.
        trust_remote_code: allow a base model whose code lives on the hub (off unless you trust the repo).
    """
    print(merge_adapter(adapter_dir, output_dir, base, dtype, trust_remote_code, base_weights))
