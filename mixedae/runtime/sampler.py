"""The one data order of every engine: a resumable, sharded stream of epochs whose samples
carry their own augmentation seed.

* :class:`EpochStreamSampler` yields ``(index, seed)`` forever: epoch ``e`` is a permutation
  seeded by ``(seed, e)``, sharded over ranks (padded by wrapping so every rank gets the same
  count) and cut to its first ``used`` indices (whole optimizer steps). Starting at
  ``(start_epoch, start_offset)`` reproduces exactly the stream an uninterrupted run sees, so a
  single DataLoader (and its workers) serves the whole run.
* The per-sample seed is a function of ``(seed, epoch, index)`` only, and
  :class:`SeededSample` runs a dataset's loading + augmentation under it (torch, python and
  numpy RNGs, restored afterwards). Augmentations therefore do not depend on the number of
  workers, on which worker serves a sample, or on where a run was resumed.
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Augmentation seed of one sample (63-bit, well spread over (seed, epoch, index))."""
    base = ((seed * 1_000_003 + epoch) * 2_147_483_629) % 2 ** 62
    return (base + index * 0x9E3779B97F4A7C15) % 2 ** 62


class EpochStreamSampler(Sampler):
    """Endless, resumable, rank-sharded ``(index, seed)`` stream (see module docstring)."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1,
                 used: int | None = None, start_epoch: int = 0, start_offset: int = 0):
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.per_rank = math.ceil(n / world)
        self.used = self.per_rank if used is None else min(used, self.per_rank)
        self.start_epoch, self.start_offset = start_epoch, start_offset

    def epoch_indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank * self.world
        order = (order * math.ceil(total / self.n))[:total]
        return order[self.rank::self.world][:self.used]

    def __iter__(self):
        epoch, offset = self.start_epoch, self.start_offset
        while True:
            for i in self.epoch_indices(epoch)[offset:]:
                yield i, sample_seed(self.seed, epoch, i)
            epoch, offset = epoch + 1, 0


@contextmanager
def seeded_rngs(seed: int):
    """Run a block under ``seed`` for torch (CPU), python and numpy; restore them after."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also queue a lazy CUDA seeding call
        # (with a formatted stack) per sample in processes without an initialised GPU
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


class SeededSample(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` loads and augments under ``seed``
    (plain integer indices pass through unseeded)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        with seeded_rngs(seed):
            return self.dataset[index]
