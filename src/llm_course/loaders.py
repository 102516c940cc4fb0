"""DataLoader construction shared by every DataModule, with resumable shuffling."""

import os
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


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
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader with the course's defaults: epoch-seeded shuffling and persistent workers."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(dataset) if shuffle else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        # Worker seeds come from this generator instead of the global RNG (see EpochShuffleSampler).
        generator=torch.Generator().manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0))),
        **kwargs,
    )
