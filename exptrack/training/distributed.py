"""Several GPUs (or CPU processes): DistributedDataParallel under torchrun.

`torchrun --nproc_per_node N -m exptrack train ...` starts N processes; each trains on its share
of every epoch's weighted draw, gradients are averaged by DDP, train metrics are summed across
ranks. Each rank validates its share of the validation clips and every rank then holds all of
their logits (gather_shards), so every rank computes the same metrics and takes the same early
stopping decision. Only rank 0 writes checkpoints and talks to MLflow.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..device import DeviceError

log = logging.getLogger("exptrack.train")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # Started by torchrun: a process group is joined even with one process, so that
    # `torchrun --nproc_per_node 1` runs the DDP/NCCL path of N GPUs on a one-GPU machine.
    launched: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group that torchrun describes in the environment (a no-op otherwise).
    On CUDA each rank binds to GPU LOCAL_RANK before NCCL starts, so that the communicator,
    DDP's device_ids and every tensor of the rank share one device; more ranks per machine
    than GPUs is a DeviceError (exit 2) before any group is joined."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = "TORCHELASTIC_RUN_ID" in os.environ  # set by torchrun for every worker
    if world <= 1 and not launched:
        return DistEnv()
    env = DistEnv(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                  launched=launched)
    use_cuda = device.type == "cuda"
    if use_cuda:
        gpus = torch.cuda.device_count()
        if env.local_rank >= gpus:
            per_node = os.environ.get("LOCAL_WORLD_SIZE", str(env.local_rank + 1))
            raise DeviceError(f"torchrun --nproc_per_node {per_node}: this machine has {gpus} GPU(s) torch can use; "
                              f"start at most {gpus} processes per machine (or set train.device=cpu)")
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        if use_cuda:  # device_id: the NCCL communicator is created now, on this rank's GPU
            dist.init_process_group(backend="nccl", device_id=torch.device("cuda", env.local_rank))
        else:
            dist.init_process_group(backend="gloo")
    if not env.is_main:  # one voice: the other ranks report only problems
        logging.getLogger("exptrack").setLevel(logging.WARNING)
    log.info("process group: %s backend, %d rank(s)", dist.get_backend(), env.world_size)
    return env


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's own randomness (dropout, loader workers): `seed` on rank 0, so one
    process trains as before, and a different stream on every other rank; otherwise N GPUs
    would draw the same dropout masks at every step. The sampler's permutation is not drawn
    from this: it stays shared (train.seed) so that the ranks split one draw between them."""
    return seed if rank == 0 else (seed + 1_000_003 * rank) % 2**32  # numpy's seeds end at 2**32


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (None on the others); [obj] without a process group. A
    collective: every rank must call it at the same point."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` on every rank, in rank order; [obj] without a process group. A
    collective: every rank must call it at the same point."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_and_size() -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def device_for(env: DistEnv, device: torch.device) -> torch.device:
    """Each rank on its own GPU."""
    if env.enabled and device.type == "cuda":
        return torch.device("cuda", env.local_rank)
    return device


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


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


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is set on any rank (a collective, as all_reduce_min)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    return all_reduce_sum([float(flag)], device)[0] > 0


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    """Elementwise minimum over ranks, in place, returned; `t` unchanged without a process group.
    A collective: every rank must call it at the same point of its loop, or the others wait."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def gather_shards(t: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """The whole of a tensor whose rows were split between ranks as an evaluation loader splits
    clips (data.sampling.EvaluationShard: rank r has rows r, r + N, r + 2N, ... of the padded
    order, every rank the same count): all ranks' rows, in the original order, the padding cut
    off at `total`. `t` itself without a process group. A collective, on `device` (NCCL's GPU)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    world = dist.get_world_size()
    if not 0 <= len(t) * world - total < world:  # e.g. a loader that was not sharded: every clip N times
        raise ValueError(f"gather_shards: {len(t)} rows on each of {world} ranks are not a share of {total}")
    local = t.to(device)
    shards = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(shards, local)
    # N_rank rows per rank -> (N_rank, ranks, ...) -> (N_rank * ranks, ...): row i of rank r is row i * ranks + r
    return torch.stack(shards, dim=1).flatten(0, 1)[:total].to(t.device)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


LAUNCHER_MARGIN_S = 10.0  # of torchrun's shutdown timeout, left for ending the run after the drain


def shutdown_budget(seconds: float) -> float:
    """How long a stopped rank may spend delivering tracking calls. torchrun SIGKILLs its workers
    `--shutdown-timeout` after it forwarded a signal (TORCH_ELASTIC_SHUTDOWN_TIMEOUT or
    PET_SHUTDOWN_TIMEOUT; 30 s by default, and a flag given on its command line is not visible
    here): a killed rank 0 would leave its run RUNNING, so it keeps LAUNCHER_MARGIN_S of that
    for ending the run. What the drain leaves is delivered by the resume."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return seconds
    raw = os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT") or os.environ.get("PET_SHUTDOWN_TIMEOUT") or "30"
    try:
        launcher = float(raw)
    except ValueError:
        launcher = 30.0
    return max(0.0, min(seconds, launcher - LAUNCHER_MARGIN_S))
