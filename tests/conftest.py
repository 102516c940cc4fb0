"""Shared test helpers. Tests never touch the network or ../shared/data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from llm_course import tiny  # noqa: E402
from llm_course.cli import main  # noqa: E402
from llm_course.tiny import CHATML, byte_tokenizer  # noqa: E402, F401  (the tests import them from here)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def run_cli(*args: str) -> None:
    """Run ``llm-course`` in-process; a jsonargparse or user error surfaces as ``SystemExit``."""
    main([str(a) for a in args])


def run_dir(root: Path) -> Path:
    """The newest run directory (``tensorboard_logs/version_N``) under ``root``."""
    runs = sorted((root / "tensorboard_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    assert runs, f"no run directory under {root}"
    return runs[-1]


def load_state(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]


@pytest.fixture
def cli():
    return run_cli


def write_tiny_idx(folder: Path, n_train: int = 120, n_test: int = 40, gz: bool = True) -> Path:
    """MNIST-layout IDX files whose images carry their own index in pixels (0, 0) and (0, 1).

    Each class draws a bright horizontal bar at row ``3 + 2 * label``, so even a tiny model can learn it.
    """
    import numpy as np

    from llm_course.vision.idx import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    start = 0
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        ids = np.arange(start, start + n)
        images[:, 0, 0], images[:, 0, 1] = ids % 256, ids // 256
        for i, label in enumerate(labels):
            images[i, 3 + 2 * label, 4:24] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        start += n
    return folder


@pytest.fixture
def tiny_idx_args(tmp_path):
    """CLI arguments that point a vision config at tiny IDX files written for the test."""
    folder = write_tiny_idx(tmp_path / "idx")
    return [f"--data.init_args.data_dir={folder}", "--data.init_args.batch_size=16"]


POSITIVE = ["a wonderful, moving film", "great acting and a clever plot", "I loved every minute", "brilliant fun"]
NEGATIVE = ["a boring, awful mess", "terrible acting and a dull plot", "I hated every minute", "a waste of time"]


def review_rows(n: int, num_labels: int = 2) -> list[dict]:
    """Tiny labelled texts; with two labels, positive and negative phrases a model can tell apart."""
    rows = []
    for i in range(n):
        label = i % num_labels
        words = (POSITIVE if label else NEGATIVE)[i % 4] if num_labels == 2 else f"topic {label} news item"
        rows.append({"text": f"{words} number {i}", "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import gzip
    import json

    lines = "".join(json.dumps(r) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(lines)
    else:
        path.write_text(lines)
    return path


@pytest.fixture
def tiny_text_args(tmp_path, monkeypatch, request):
    """CLI arguments that point a text config at tiny local files (4 labels for AG News), cache in tmp."""
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path / "cache"))
    labels = 4 if "ag_news" in request.node.name else 2
    train = write_jsonl(tmp_path / "train.jsonl", review_rows(48, labels))
    test = write_jsonl(tmp_path / "test.jsonl", review_rows(16, labels))
    return [
        f"--data.init_args.train_file={train}",
        f"--data.init_args.test_file={test}",
        "--data.init_args.batch_size=8",
    ]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT classifier built from a config, saved with the embedded MiniLM tokenizer."""
    return tiny.tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


save_tiny_lm = tiny.tiny_lm  # a 2-layer Llama or GPT-2 with the byte tokenizer (llm_course.tiny)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_gpt2"), "gpt2")


def instruction_rows(n: int) -> list[dict]:
    """Alpaca-style records with a learnable answer (the instruction's number doubled)."""
    rows = []
    for i in range(n):
        extra = {"input": f"in French, number {i}"} if i % 4 == 0 else {"input": ""}
        rows.append({"instruction": f"Double {i}.", **extra, "output": f"{2 * i}.", "status": "ok" if i % 5 else "dup"})
    return rows


@pytest.fixture
def tiny_sft_args(tmp_path, request, tiny_llama, tiny_gpt2):
    """CLI arguments that point an SFT config at a tiny model (GPT-2 for sft_gpt2) and tiny records."""
    train = write_jsonl(tmp_path / "instructions.jsonl", instruction_rows(40))
    model = tiny_gpt2 if "gpt2" in request.node.name else tiny_llama
    return [
        f"--model.init_args.model_name_or_path={model}",
        f"--data.init_args.train_file={train}",
        "--data.init_args.val_size=8",
        "--data.init_args.batch_size=4",
        "--data.init_args.eval_batch_size=4",
        "--model.init_args.max_new_tokens=4",
    ]


@pytest.fixture(scope="session")
def constant_llama(tmp_path_factory) -> str:
    """A tiny Llama that always answers "ok ok ok ...": its output layer is zero, so every logit ties and greedy
    decoding picks token 0, which this byte tokenizer maps to the word "ok " (never the end-of-turn token)."""
    return tiny.constant_lm(tmp_path_factory.mktemp("constant_llama"), "okĠ")  # Ġ is the space


@pytest.fixture(scope="session")
def embedder():
    """The embedded MiniLM as a sentence-transformers model (Module 8's embedder), loaded once per session."""
    from llm_course.rag.index import load_embedder

    return load_embedder("minilm")
