"""``llm-course export onnx``: the Module 3 classifier as an ONNX file, checked against PyTorch with onnxruntime.

The export folder holds ``model.onnx`` (inputs ``input_ids``, ``attention_mask`` and, for BERT-like models,
``token_type_ids``, each ``[batch, sequence]``; output ``logits``), ``model.int8.onnx`` (dynamic int8
quantization), the config and tokenizer files, and ``export.json`` with what the check measured.
:class:`OnnxClassifier` scores texts from that folder with onnxruntime and the tokenizer alone.
"""

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from llm_course.assets import from_pretrained
from llm_course.errors import ConfigError, MissingFileError
from llm_course.export import onnx_check as check
from llm_course.export.onnx_classifier import OnnxClassifier, Truncation, pad, require
from llm_course.reports import write_report
from llm_course.truncation import encode_texts

RUN_HINT = (
    "the hf_model folder of a Module 3 run, <run>/hf_model, which `llm-course fit --config configs/imdb.yaml` "
    "saves (e.g. outputs/tensorboard_logs/version_0/hf_model)"
)


def classifier_folder(model_dir: str) -> Path:
    """The ``hf_model`` folder to export: ``model_dir`` itself, or its ``hf_model/`` when given a run folder.

    Raises:
        MissingFileError: neither holds a ``config.json``.
    """
    folder = Path(model_dir).expanduser()
    if not (folder / "config.json").is_file() and (folder / "hf_model" / "config.json").is_file():
        folder = folder / "hf_model"
    if not (folder / "config.json").is_file():
        what = "does not exist" if not folder.exists() else "has no config.json"
        raise MissingFileError(f"--model_dir {model_dir} {what}; pass {RUN_HINT}")
    return folder


def load_classifier(folder: Path) -> tuple[torch.nn.Module, Any]:
    """``AutoModelForSequenceClassification`` (fp32, eval mode) and ``AutoTokenizer`` from ``folder``.

    Raises:
        ConfigError: the folder holds another kind of model (a causal LM from Module 6, a bare encoder).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = from_pretrained(AutoConfig, str(folder), "--model_dir")
    kinds = config.architectures or []
    if kinds and not any(k.endswith("ForSequenceClassification") for k in kinds):
        raise ConfigError(f"--model_dir {folder} holds a {kinds[0]}, not a sequence classifier; pass {RUN_HINT}")
    model = from_pretrained(AutoModelForSequenceClassification, str(folder), "--model_dir", dtype=torch.float32)
    return model.eval(), from_pretrained(AutoTokenizer, str(folder), "--model_dir")


class Logits(torch.nn.Module):
    """The classifier as ``(input_ids, attention_mask[, token_type_ids]) -> logits``: positional tensors in, one
    tensor out, which is what an ONNX graph's named inputs and output map onto."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def input_names(model: torch.nn.Module, tokenizer: Any) -> list[str]:
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if takes_types and
                                              "token_type_ids" in tokenizer.model_input_names else [])  # fmt: skip


def export_model(model: torch.nn.Module, sample: dict[str, np.ndarray], path: Path, opset: int,
                 exporter: Literal["torchscript", "dynamo"]) -> Path:  # fmt: skip
    """Write ``model`` to ``path`` with batch and sequence axes dynamic; ``sample`` (2+ texts, padded) traces it."""
    names, args = list(sample), tuple(torch.from_numpy(v) for v in sample.values())
    wrapper = Logits(model).eval()
    # The tracer warns about Python-level shape checks and the legacy exporter about its own deprecation; the
    # comparison with PyTorch that follows is what tells whether the graph is right.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            program = torch.onnx.export(wrapper, args, input_names=names, output_names=["logits"],
                                        opset_version=opset, dynamo=True, verbose=False,
                                        dynamic_shapes={n: {0: batch, 1: sequence} for n in names})  # fmt: skip
            program.save(str(path))
        else:
            axes = {**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}}
            torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["logits"],
                              opset_version=opset, dynamo=False, dynamic_axes=axes)  # fmt: skip
    return path


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_logits(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.float().numpy()


def onnx(
    model_dir: str,
    output_dir: str,
    check_file: str | None = None,
    max_check_samples: int | None = 256,
    max_length: int = 128,
    truncation: Truncation = "head_tail",
    head_fraction: float = 0.25,
    exporter: Literal["torchscript", "dynamo"] = "torchscript",
    opset: int = 18,
    quantize: bool = True,
    reduce_range: Literal["auto"] | bool = "auto",
    atol: float = 1e-4,
    batch_size: int = 32,
    repeats: int = 20,
) -> dict[str, Any]:
    """Export a Module 3 classifier to ONNX, check it against PyTorch with onnxruntime, and quantize it to int8.

    Writes ``model.onnx``, ``model.int8.onnx``, the config and tokenizer files and ``export.json`` (accuracy or
    agreement, logit differences, sizes, latencies) to ``output_dir``, and prints a summary table.

    Args:
        model_dir: the classifier's folder, ``<run>/hf_model`` from ``llm-course fit --config configs/imdb.yaml``
            (a run folder that holds ``hf_model/`` works too).
        output_dir: where the ONNX files, the tokenizer and ``export.json`` go.
        check_file: held texts to check on, a JSONL file with ``text`` and ``label`` fields (the IMDb test file);
            none: eight built-in sentences, compared with PyTorch's predictions only.
        max_check_samples: check on at most this many texts of ``check_file`` (a seeded random subset).
        max_length: tokens per text, special tokens included (as in training: 128 in configs/imdb.yaml).
        truncation: ``head`` keeps the start of long texts, ``head_tail`` the start and the end (as in training).
        head_fraction: share of the token budget taken from the start under ``head_tail``.
        exporter: ``torchscript`` (the legacy tracer; needs only onnx) or ``dynamo`` (torch.export; needs
            onnxscript).
        opset: the ONNX operator set version.
        quantize: also write ``model.int8.onnx`` (onnxruntime dynamic quantization) and measure it.
        reduce_range: 7-bit int8 weights. ``auto``: true on x86 CPUs without VNNI (AVX2-only ones), whose int8
            kernels saturate with 8-bit weights; false with VNNI/AMX and on ARM. ``export.json`` says which and why.
        atol: the largest |logit difference| allowed between ONNX (fp32) and PyTorch.
        batch_size: texts per batch in the check; the latency is timed on the first batch.
        repeats: timed runs per model form and thread count (the median is reported).

    Raises:
        MissingDependencyError: onnx or onnxruntime (or onnxscript for ``dynamo``) is not installed.
        MissingFileError: ``model_dir`` or ``check_file`` does not exist, or ``model_dir`` has no config.json.
        ConfigError: ``model_dir`` is not a sequence classifier, ``max_length`` exceeds its positions, or
            ``reduce_range`` is not auto, true or false.
        ExportMismatchError: the ONNX logits differ from PyTorch's by more than ``atol``, or a prediction differs.
    """
    require("onnx", "onnxruntime")
    if exporter == "dynamo":
        require("onnxscript", install="pip install onnxscript, or use --exporter torchscript")
    model, tokenizer = load_classifier(folder := classifier_folder(model_dir))
    label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and max_length > positions:
        raise ConfigError(f"--max_length {max_length} is more than the model's {positions} positions")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tokens = {"max_length": max_length, "truncation": truncation, "head_fraction": head_fraction}
    names = input_names(model, tokenizer)

    def batches_of(texts: list[str]) -> list[dict[str, np.ndarray]]:
        chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        return [pad(tokenizer, encode_texts(tokenizer, chunk, **tokens), names) for chunk in chunks]

    onnx_file = export_model(model, batches_of(check.SENTENCES[:2])[0], out / "model.onnx", opset, exporter)
    texts, labels = (check.SENTENCES, None)
    if check_file:
        texts, labels = check.read_check_file(check_file, label_names, max_check_samples)
    batches = batches_of(texts)
    reference = np.concatenate([torch_logits(model, b) for b in batches])
    weights = [f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
    variants = {"pytorch": {**check.fidelity(reference, reference, labels), "size_mb": check.megabytes(*weights)}}
    threads = sorted({torch.get_num_threads(), 1}, reverse=True)
    sessions: dict[str, dict[int, OnnxClassifier]] = {}

    def score(name: str, file: Path) -> None:
        sessions[name] = {n: OnnxClassifier(out, file.name, threads=n, spin=False, **tokens) for n in threads}
        logits = np.concatenate([sessions[name][threads[0]].run(b) for b in batches])
        variants[name] = {**check.fidelity(reference, logits, labels), "size_mb": check.megabytes(file)}

    score("onnx_fp32", onnx_file)
    check.raise_on_mismatch(variants["onnx_fp32"], atol, onnx_file)
    int8 = check.int8_weight_range(reduce_range) if quantize else None
    if int8:
        score("onnx_int8", check.quantize_int8(onnx_file, out / "model.int8.onnx", int8["reduce_range"]))
    timed = batches[0]  # the same batch for every model form, timed in turn
    for n in threads:
        with torch_threads(n):
            runs = {"pytorch": partial(torch_logits, model, timed)}
            runs |= {name: partial(by_threads[n].run, timed) for name, by_threads in sessions.items()}
            for name, ms in check.median_latency(runs, repeats).items():
                variants[name].setdefault("latency_ms", {})[str(n)] = ms
    base = variants["pytorch"]["latency_ms"]
    speedup = {name: {n: round(base[n] / ms, 3) for n, ms in variants[name]["latency_ms"].items()} for name in sessions}
    results = {
        "model_dir": str(folder), "output_dir": str(out), "exporter": exporter, "opset": opset, "inputs": names,
        "labels": label_names, "tokenization": tokens,
        "check": {"source": check_file or "built-in sentences", "texts": len(texts), "labelled": labels is not None,
                  "atol": atol, "passed": True},
        "latency": {"batch_shape": list(timed["input_ids"].shape), "repeats": repeats, "threads": threads},
        **({"int8": int8} if int8 else {}), "variants": variants, "speedup_vs_pytorch": speedup,
        "onnx_versions": check.onnx_versions(),
    }  # fmt: skip
    write_report(out, "export", results)
    print(f"{folder} -> {out}/ ({len(texts)} check texts; latency of a batch of {list(timed['input_ids'].shape)})")
    print(check.summary_table(variants, threads))
    if int8:
        print(f"int8: reduce_range {str(int8['reduce_range']).lower()} ({int8['reason']})")
    return results
