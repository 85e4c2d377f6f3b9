"""A shuffled, rank-sharded epoch sampler that can start part-way through an epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from dropmae.seeding import derive_seed


class ResumableEpochSampler(Sampler[int]):
    """The indices one rank reads in one epoch, optionally skipping the first ``start`` of them.

    Written here because torch's DistributedSampler cannot start mid-epoch, which an exact
    resume after an interruption at any step needs. The order is a pure function of
    (seed, epoch): every rank draws the same permutation and reads its own stride of it,
    padded (like DistributedSampler) so every rank gets the same count.
    """

    def __init__(self, dataset_size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if dataset_size <= 0:
            raise ValueError("the dataset is empty: no frame pairs to sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.dataset_size = dataset_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    @property
    def samples_per_rank(self) -> int:
        return -(-self.dataset_size // self.world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.samples_per_rank:
            raise ValueError(f"start {start} outside [0, {self.samples_per_rank}]")
        self.epoch = epoch
        self.start = start

    def epoch_indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0x5A3))
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        padded_size = self.samples_per_rank * self.world_size
        order += (order * (padded_size // len(order) + 1))[: padded_size - len(order)]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start :])

    def __len__(self) -> int:
        return self.samples_per_rank - self.start


class EpochSeededDataset(Dataset):
    """A dataset whose items are a pure function of (seed, epoch, [rank,] index).

    The training loop calls ``set_epoch`` before each epoch and ``set_rank`` once; with
    DataLoader workers the dataset object is copied into each worker at iteration start,
    so both must be set before iterating.
    """

    epoch: int = 0
    rank: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_rank(self, rank: int) -> None:
        self.rank = rank
