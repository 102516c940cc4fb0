"""The desk's sentiment classifier: Module 3's, or an offline fallback fitted in seconds.

``--classifier`` takes a Module 3 run's ``hf_model/`` folder (or the run folder) or its ONNX export (the folder
``llm-course export onnx`` wrote). Without one, the fallback works on a fresh install with no download: a softmax
(multinomial logistic regression) head fitted on the embedded MiniLM's embeddings of the ~90 labelled messages in
``sentiment_train.jsonl`` (positive, neutral, negative, angry), written for the desk and disjoint from the evaluation
messages. Every result names the classifier that produced it.
"""

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_course.errors import MissingFileError

LABELS = ("positive", "neutral", "negative", "angry")
FALLBACK = "fallback: logistic regression on MiniLM embeddings of sentiment_train.jsonl"


@dataclass
class Sentiment:
    label: str
    confidence: float  # the probability of ``label``
    scores: dict[str, float]  # every label's probability
    classifier: str

    @property
    def anger(self) -> float:
        """How angry the message reads: P(angry), or P(negative) for a classifier without an angry class (IMDb's
        binary Module 3 model): the hand-over rule compares it with a threshold chosen on validation messages."""
        return self.scores.get("angry", self.scores.get("negative", 0.0))

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": round(self.confidence, 4), "classifier": self.classifier,
                "scores": {k: round(v, 4) for k, v in self.scores.items()}}  # fmt: skip


def desk_label(name: str, n_labels: int) -> str:
    """A classifier's label as the desk names it: IMDb's ``neg``/``pos`` (or ``LABEL_0``/``LABEL_1``, ``0``/``1``
    of a two-label model) become negative/positive; other names are kept."""
    low = name.lower()
    if low.startswith("neg"):
        return "negative"
    if low.startswith("pos"):
        return "positive"
    if n_labels == 2 and low.removeprefix("label_") in ("0", "1"):
        return ("negative", "positive")[int(low[-1])]
    return low


def _sentiments(probs: np.ndarray, labels: list[str], source: str) -> list[Sentiment]:
    names = [desk_label(name, len(labels)) for name in labels]
    out = []
    for row in probs:
        best = int(row.argmax())
        out.append(Sentiment(names[best], float(row[best]), dict(zip(names, map(float, row), strict=True)), source))
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def training_rows(name: str = "sentiment_train.jsonl") -> list[dict[str, str]]:
    """The labelled ``{"text", "label"}`` rows of a file shipped with the desk."""
    text = resources.files("llm_course.agent.desk").joinpath(name).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class EmbeddingHead:
    """The fallback: a softmax head on normalized MiniLM embeddings, fitted full-batch with L-BFGS from zeros (so
    the same weights on every machine), with an L2 penalty. ``labels`` and ``source`` make it another desk
    classifier (the help centre's scope head)."""

    def __init__(self, embedder: Any, rows: list[dict[str, str]] | None = None, l2: float = 1e-3,
                 labels: tuple[str, ...] = LABELS, source: str = FALLBACK) -> None:  # fmt: skip
        rows = rows if rows is not None else training_rows()
        self.embedder, self.labels, self.source = embedder, list(labels), source
        x = torch.from_numpy(self.embed([r["text"] for r in rows]))
        y = torch.tensor([self.labels.index(r["label"]) for r in rows])
        self.weight = torch.zeros(x.shape[1], len(self.labels), requires_grad=True)
        self.bias = torch.zeros(len(self.labels), requires_grad=True)
        optimizer = torch.optim.LBFGS([self.weight, self.bias], max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ self.weight + self.bias, y) + l2 * self.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight, self.bias = self.weight.detach(), self.bias.detach()

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True), np.float32)

    def predict(self, texts: list[str]) -> list[Sentiment]:
        logits = (torch.from_numpy(self.embed(texts)) @ self.weight + self.bias).numpy()
        return _sentiments(_softmax(logits.astype(np.float64)), self.labels, self.source)


class HFSentiment:
    """A Module 3 ``hf_model/`` folder, run with PyTorch."""

    def __init__(self, folder: Path) -> None:
        from llm_course.export.onnx import load_classifier

        self.model, self.tokenizer = load_classifier(folder)
        config = self.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.source = f"Module 3 classifier {folder}"

    def predict(self, texts: list[str]) -> list[Sentiment]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**batch).logits.double().numpy()
        return _sentiments(_softmax(logits), self.labels, self.source)


class OnnxSentiment:
    """The ONNX export of a Module 3 classifier, run with onnxruntime."""

    def __init__(self, folder: Path) -> None:
        from llm_course.export.onnx_classifier import OnnxClassifier

        self.model = OnnxClassifier(folder)
        self.labels, self.source = self.model.labels, f"Module 3 classifier, ONNX export {folder}"

    def predict(self, texts: list[str]) -> list[Sentiment]:
        return _sentiments(_softmax(self.model.logits(texts).astype(np.float64)), self.labels, self.source)


def load_sentiment(classifier: str | None, embedder: Any) -> EmbeddingHead | HFSentiment | OnnxSentiment:
    """The classifier ``--classifier`` names (an ONNX export folder, an ``hf_model/`` folder or its run folder), or
    the fallback head when ``None``.

    Raises:
        MissingFileError: the folder holds neither ``model.onnx`` nor a ``config.json`` (itself or ``hf_model/``).
    """
    if classifier is None:
        return EmbeddingHead(embedder)
    folder = Path(classifier).expanduser()
    if (folder / "model.onnx").is_file():
        return OnnxSentiment(folder)
    from llm_course.export.onnx import classifier_folder

    try:
        return HFSentiment(classifier_folder(str(folder)))
    except MissingFileError as err:
        raise MissingFileError(
            f"--classifier {classifier}: neither an ONNX export (model.onnx) nor a Module 3 hf_model folder; "
            "leave it out to use the offline fallback"
        ) from err
