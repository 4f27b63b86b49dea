"""Several GPUs (or CPU processes): DistributedDataParallel under torchrun.

`torchrun --nproc_per_node N -m exptrack train ...` starts N processes; each trains on its share
of every epoch's weighted draw, gradients are averaged by DDP, train metrics are summed across
ranks, and every rank validates the whole validation set (so every rank takes the same early
stopping decision). Only rank 0 writes checkpoints and talks to MLflow.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistEnv:
    """Join the process group that torchrun describes in the environment (a no-op otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    env = DistEnv(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if not env.is_main:  # one voice: the other ranks report only problems
        logging.getLogger("exptrack").setLevel(logging.WARNING)
    return env


def device_for(env: DistEnv, device: torch.device) -> torch.device:
    """Each rank on its own GPU."""
    if env.enabled and device.type == "cuda":
        return torch.device("cuda", env.local_rank)
    return device


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision for everyone."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
