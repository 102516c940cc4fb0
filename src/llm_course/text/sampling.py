"""Samplers that put texts of similar length in the same batch, so batches carry little padding."""

import os
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Random batches of similar lengths, seeded by ``(seed_everything seed, epoch)`` like EpochShuffleSampler.

    Shuffle all indices, cut them into mega-batches of ``batch_size * group_batches``, sort each mega-batch
    by length (longest first) and cut it into batches, then shuffle the order of the batches. Each batch is
    random but homogeneous in length, which cuts padding several-fold on IMDb-like data.

    Under DDP Lightning re-distributes the indices of a custom sampler, which undoes the grouping; use it on
    one device (or set ``use_distributed_sampler=False`` with a per-rank shard).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, group_batches: int = 50) -> None:
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.group = batch_size, batch_size * group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)) * 100_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g)
        batches = []
        for mega in order.split(self.group):
            mega = mega[torch.argsort(self.lengths[mega], descending=True, stable=True)]
            batches += list(mega.split(self.batch_size))
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield from batches[i].tolist()

    def __len__(self) -> int:
        return len(self.lengths)


class SortedSampler(Sampler[int]):
    """Indices from the longest text to the shortest: evaluation batches with almost no padding."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self.order = torch.argsort(torch.as_tensor(lengths), descending=True, stable=True).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
