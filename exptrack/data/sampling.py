"""Training samplers: the class-balancing weighted draw, shared between DDP ranks.

It lives with the data (not with the DDP set-up in training/) because the data loader builds
it; it needs only a rank and a world size, not a process group.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
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
        draw = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g).numpy()
        # numbered over the whole draw, before the split: every rank numbers repeats as one process would
        return iter(number_repeats(draw, len(self.weights))[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples // self.world_size


def number_repeats(draw: np.ndarray, num_clips: int) -> np.ndarray:
    """Clip indices drawn with replacement -> the same draw with each repeat told apart: the k-th
    earlier draw of a clip in it makes its index `clip + k * num_clips` (first draws unchanged).
    A draw as large as the data repeats about a third of its clips; ClipDataset gives each
    repeat an augmentation of its own instead of an identical copy (split_repeat reads it back)."""
    order = np.argsort(draw, kind="stable")  # a clip's draws stay in draw order
    ordered = draw[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]  # the first of each clip's run
    run_start = np.maximum.accumulate(np.where(first, np.arange(len(draw)), 0))
    repeat = np.empty(len(draw), dtype=np.int64)
    repeat[order] = np.arange(len(draw)) - run_start  # k: the clip's earlier draws
    return draw + repeat * num_clips


def split_repeat(indices: np.ndarray, num_clips: int) -> tuple[np.ndarray, np.ndarray]:
    """number_repeats' indices -> (clip indices, repeat numbers); plain indices are repeat 0."""
    return indices % num_clips, indices // num_clips
