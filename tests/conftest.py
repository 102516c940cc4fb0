"""Shared test helpers. Tests never touch the network or ../shared/data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from llm_course.cli import main  # noqa: E402

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
