"""Training samplers: the class-balancing weighted draw, shared between DDP ranks.

It lives with the data (not with the DDP set-up in training/) because the data loader builds
it; it needs only a rank and a world size, not a process group.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class DistributedWeightedSampler(Sampler[int]):
    """The same weighted draw (with replacement) on every rank, split between ranks.

    Every rank draws `num_samples` indices from one generator seeded by (seed, epoch) and keeps
    every world_size-th, so the ranks together see exactly the single-process draw.
    """

    def __init__(self, weights: torch.Tensor, num_samples: int, rank: int, world_size: int, seed: int = 0) -> None:
        self.weights = weights.double()
        self.num_samples = num_samples - num_samples % world_size  # equal shares: no rank waits
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        draw = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        return iter(draw[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples // self.world_size
