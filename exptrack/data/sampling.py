"""Samplers for DDP ranks: the class-balancing weighted draw of training, and the evaluation
shard that splits validation between ranks.

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


class EvaluationShard(Sampler[int]):
    """Rank r's clips of an evaluation pass in N ranks: r, r + N, r + 2N, ... of the clips in
    order, padded with the first clips to a multiple of N so that every rank runs the same number
    of batches (DDP's forward may be a collective). training.distributed.gather_shards puts the
    ranks' outputs back in order and drops the padding."""

    def __init__(self, num_samples: int, rank: int, world_size: int) -> None:
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.per_rank = -(-num_samples // world_size)  # ceil

    def __iter__(self) -> Iterator[int]:
        padded = [i % self.num_samples for i in range(self.per_rank * self.world_size)]
        return iter(padded[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.per_rank
