"""DataLoader construction and seeded train/val/test splits shared by every DataModule, with resumable shuffling."""

import math
import os
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from llm_course.errors import ConfigError


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a generator seeded by ``(seed_everything seed, epoch)`` and nothing else.

    The order of epoch ``e`` is a pure function of the seed and ``e``, so a run resumed from a checkpoint
    sees exactly the batches an uninterrupted run would, and data loading never draws from the global
    RNG (whose state :class:`~llm_course.callbacks.RNGState` restores for dropout and friends).
    Lightning calls :meth:`set_epoch` before each epoch, as it does for ``DistributedSampler``.
    """

    def __init__(self, data_source: Sized) -> None:
        self.n = len(data_source)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything, as Lightning's samplers use
        g = torch.Generator().manual_seed(seed * 100_003 + self.epoch)
        yield from torch.randperm(self.n, generator=g).tolist()

    def __len__(self) -> int:
        return self.n


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    sampler: Sampler[int] | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader with the course's defaults: epoch-seeded shuffling, persistent workers, exact evaluation.

    Args:
        dataset: the samples.
        batch_size: samples per batch (per process under DDP).
        shuffle: a training loader: ``sampler`` (default :class:`EpochShuffleSampler`) orders it, and under DDP
            Lightning shards it. Otherwise an evaluation loader in ``sampler``'s order (default: as stored),
            sharded by :func:`eval_sampler` so that every sample counts exactly once.
        num_workers: worker processes.
        collate_fn: builds a batch from a list of samples.
        sampler: the order of the samples.
    """
    if shuffle:
        sampler = sampler if sampler is not None else EpochShuffleSampler(dataset)
    else:
        sampler = eval_sampler(dataset, sampler)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        # Worker seeds come from this generator instead of the global RNG (see EpochShuffleSampler).
        generator=torch.Generator().manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0))),
        **kwargs,
    )


def eval_sampler(dataset: Sized, sampler: Sampler[int] | None = None) -> Sampler[int] | None:
    """``sampler`` (or the stored order) as it should be for evaluation: unchanged in one process; under DDP, this
    rank's share of it with no padding.

    Lightning's own ``DistributedSampler`` pads the last shard with repeats so that every rank gets as many batches,
    which counts some samples twice in test metrics. Rank ``r`` of ``W`` gets positions ``r, r + W, ...`` of the
    order instead; torchmetrics then sums counts over ranks, so metrics equal the one-process run's.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return sampler
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper

    return UnrepeatedDistributedSamplerWrapper(sampler if sampler is not None else SequentialSampler(dataset),
                                               shuffle=False)  # fmt: skip


def check_fractions(val_fraction: float, test_fraction: float = 0.0, prefix: str = "data.") -> None:
    """Check the shares of rows held out for validation and test, before any data is read.

    Raises:
        ConfigError: ``val_fraction`` is outside (0, 1), ``test_fraction`` outside [0, 1), or together they
            leave no training rows; the message names the keys (``data.val_fraction``, ...) and their values.
    """
    # Every task picks its best checkpoint on validation, so validation needs rows; a test split may be empty.
    for key, value, low in (("val_fraction", val_fraction, "(0"), ("test_fraction", test_fraction, "[0")):
        inside = isinstance(value, int | float) and math.isfinite(value) and 0 <= value < 1
        if not inside or (key == "val_fraction" and value == 0):
            raise ConfigError(f"{prefix}{key}={value!r} must lie in {low}, 1)")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"{prefix}val_fraction + {prefix}test_fraction = {val_fraction} + {test_fraction} = "
            f"{val_fraction + test_fraction:g} leaves no training rows; the sum must be below 1"
        )


def split_indices(
    n: int, val_fraction: float, test_fraction: float = 0.0, seed: int = 42
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded, disjoint train/val/test index tensors covering ``range(n)``.

    ``round(n * fraction)`` rows go to validation and to test, the rest to training. The indices are those of
    ``torch.utils.data.random_split(range(n), [n_train, n_val, n_test], generator=Generator().manual_seed(seed))``:
    one permutation of ``range(n)`` cut in that order, so the split is a pure function of ``n``, the fractions
    and ``seed``.

    Raises:
        ConfigError: the fractions are not allowed (see :func:`check_fractions`) or leave no training row.
    """
    check_fractions(val_fraction, test_fraction)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    n_train = n - n_val - n_test
    if n_train <= 0:
        raise ConfigError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} leave no training rows out of {n}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train, val, test = order.split([n_train, n_val, n_test])
    return train.clone(), val.clone(), test.clone()
