"""Scoring texts with an exported classifier folder: onnxruntime and the tokenizer, no PyTorch model.

Texts are tokenized and truncated as Module 3's DataModule does (the same ``max_length``, ``head``/``head_tail``
rule), so the ONNX model sees what the trained model saw.
"""

import importlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llm_course.assets import from_pretrained
from llm_course.errors import ConfigError, MissingDependencyError, MissingFileError
from llm_course.truncation import encode_texts

Truncation = Literal["head", "head_tail"]
INSTALL = 'pip install -e ".[onnx]"'


def require(*modules: str, install: str = INSTALL) -> None:
    """Import ``modules`` or raise :class:`MissingDependencyError` naming the missing ones and ``install``."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(f"ONNX export and scoring need {' and '.join(missing)}, not installed: {install}")


def pad(tokenizer: Any, ids: list[list[int]], names: list[str]) -> dict[str, np.ndarray]:
    """int64 arrays named ``names``, padded to the longest text on the tokenizer's padding side."""
    width = max(map(len, ids))
    input_ids = np.full((len(ids), width), tokenizer.pad_token_id or 0, dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for i, row in enumerate(ids):
        cols = slice(width - len(row), width) if tokenizer.padding_side == "left" else slice(0, len(row))
        input_ids[i, cols], mask[i, cols] = row, 1
    arrays = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
    return {name: arrays[name] for name in names}


class OnnxClassifier:
    """Classify texts with an exported folder, using only onnxruntime and the tokenizer (no PyTorch model).

    Args:
        folder: what ``llm-course export onnx`` wrote (``model.onnx``, ``config.json``, the tokenizer files).
        model_file: ``model.onnx`` (fp32) or ``model.int8.onnx`` (int8 weights).
        max_length: tokens per text; default: the value ``export.json`` records, else the tokenizer's limit.
        truncation: ``head`` or ``head_tail``; default: as recorded in ``export.json``, else ``head``.
        head_fraction: share of the budget from the start under ``head_tail``; default as recorded, else 0.25.
        threads: onnxruntime's intra-op threads; 0 lets it choose (one per physical core).
        spin: let onnxruntime's threads busy-wait between calls (quicker back-to-back calls); off when timing it
            next to PyTorch, whose threads the spinning would slow.

    Raises:
        MissingDependencyError: onnxruntime is not installed.
        MissingFileError: ``folder`` holds no ``model_file``.
    """

    def __init__(self, folder: str | Path, model_file: str = "model.onnx", max_length: int | None = None,
                 truncation: Truncation | None = None, head_fraction: float | None = None, threads: int = 0,
                 spin: bool = True) -> None:  # fmt: skip
        require("onnxruntime")
        import onnxruntime as ort
        from transformers import AutoTokenizer

        folder = Path(folder)
        if not (folder / model_file).is_file() or not (folder / "config.json").is_file():
            raise MissingFileError(
                f"{folder / model_file} or its config.json does not exist: write them with "
                f"llm-course export onnx --model_dir <run>/hf_model --output_dir {folder}"
            )
        config = json.loads((folder / "config.json").read_text())
        self.labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        self.tokenizer = from_pretrained(AutoTokenizer, str(folder), "--onnx_dir")
        report = folder / "export.json"
        saved = json.loads(report.read_text()).get("tokenization", {}) if report.is_file() else {}
        limit = min(self.tokenizer.model_max_length, config.get("max_position_embeddings", 512))
        self.max_length = max_length or saved.get("max_length") or limit
        self.truncation = truncation or saved.get("truncation", "head")
        self.head_fraction = saved.get("head_fraction", 0.25) if head_fraction is None else head_fraction
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(folder / model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def inputs(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The model's input arrays for ``texts``, as one padded batch."""
        ids = encode_texts(self.tokenizer, texts, self.max_length, self.truncation, self.head_fraction)
        return pad(self.tokenizer, ids, self.input_names)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits ``[batch, labels]`` for prepared input arrays."""
        return self.session.run(["logits"], inputs)[0]

    def logits(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        return np.concatenate([self.run(self.inputs(batch)) for batch in batches])

    def predict(self, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """``{"label", "score"}`` per text: the most likely label and its softmax probability."""
        logits = self.logits(texts, batch_size).astype(np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return [{"label": self.labels[int(p.argmax())], "score": round(float(p.max()), 4)} for p in probs]


def predict(
    onnx_dir: str,
    texts: list[str] | None = None,
    input_file: str | None = None,
    output_file: str | None = None,
    model_file: str = "model.onnx",
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Classify texts with an exported folder (onnxruntime and the tokenizer only).

    Args:
        onnx_dir: the ``--output_dir`` of ``llm-course export onnx``.
        texts: texts to classify.
        input_file: a file with one text per line, classified after ``texts``.
        output_file: write one JSON line ``{"text", "label", "score"}`` per text there; none: print them.
        model_file: ``model.onnx`` (fp32) or ``model.int8.onnx``.
        batch_size: texts per onnxruntime call.

    Returns:
        One ``{"text", "label", "score"}`` per text, in input order.

    Raises:
        ConfigError: no texts are given.
        MissingFileError: ``input_file`` or the exported model does not exist.
    """
    texts = list(texts or [])
    if input_file:
        if not Path(input_file).is_file():
            raise MissingFileError(f"--input_file: {input_file} does not exist")
        texts += [t for t in Path(input_file).read_text().splitlines() if t.strip()]
    if not texts:
        raise ConfigError("nothing to classify: give --texts or --input_file")
    rows = [{"text": t, **p} for t, p in zip(texts, OnnxClassifier(onnx_dir, model_file).predict(texts, batch_size),
                                             strict=True)]  # fmt: skip
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    if output_file:
        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(output_file).write_text(lines)
    else:
        print(lines, end="")
    return rows
