"""DataModule for Module 1: a synthetic linear problem with known answer, or the Boston housing table."""

from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from llm_course.assets import load_dataset_table
from llm_course.errors import ConfigError
from llm_course.loaders import check_fractions, make_loader, split_indices

SOURCES = ("synthetic", "boston")


class RegressionDataModule(L.LightningDataModule):
    """Tabular regression data, split into train/val/test with a seeded generator.

    Features are standardized with the mean and std of the training split only, so no
    statistic leaks from validation or test data.

    Args:
        source: ``synthetic`` (y = X w + b + noise with known w and b) or ``boston``
            (the Boston housing table that ``mlxtend`` ships, 506 rows, 13 features).
        n_samples: rows to generate (synthetic only).
        n_features: features to generate (synthetic only).
        noise_std: standard deviation of the Gaussian noise added to y (synthetic only).
        val_fraction: share of rows for validation.
        test_fraction: share of rows for the test split.
        batch_size: rows per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the synthetic weights, the data and the split (not the training run).
    """

    def __init__(
        self,
        source: Literal["synthetic", "boston"] = "synthetic",
        n_samples: int = 1000,
        n_features: int = 8,
        noise_std: float = 0.1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ConfigError(f"data.source={source!r} is not one of: {', '.join(SOURCES)}")
        check_fractions(val_fraction, test_fraction)
        self.save_hyperparameters()
        self.true_weight: torch.Tensor | None = None
        self.true_bias: float | None = None

    @property
    def num_features(self) -> int:
        """Input width of the model, known before ``setup`` so the CLI can link it to the model."""
        return self.hparams.n_features if self.hparams.source == "synthetic" else 13

    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        hp = self.hparams
        if hp.source == "boston":
            return load_dataset_table("boston")
        g = torch.Generator().manual_seed(hp.seed)
        self.true_weight = torch.randn(hp.n_features, generator=g)
        self.true_bias = float(torch.randn((), generator=g))
        x = torch.randn(hp.n_samples, hp.n_features, generator=g)
        y = x @ self.true_weight + self.true_bias + hp.noise_std * torch.randn(hp.n_samples, generator=g)
        return x, y

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        x, y = self._load()
        hp = self.hparams
        split = split_indices(len(x), hp.val_fraction, hp.test_fraction, hp.seed)
        if hp.source == "boston":
            # Synthetic features are already N(0, 1) and stay raw, so the learned w compares with true_weight.
            train_x = x[split[0]]
            x = (x - train_x.mean(0)) / train_x.std(0).clamp_min(1e-8)
        self.train_set, self.val_set, self.test_set = (TensorDataset(x[idx], y[idx]) for idx in split)

    def _loader(self, dataset: TensorDataset, shuffle: bool = False) -> DataLoader:
        return make_loader(dataset, self.hparams.batch_size, shuffle, self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
