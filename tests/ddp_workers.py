"""Programs that tests/test_train.py starts under torchrun (CPU processes, gloo):
`python -m torch.distributed.run --nproc_per_node N tests/ddp_workers.py <program> <out>`.

nan_on_one_rank    the loss of rank 1 alone becomes NaN at batch 3; each rank writes what
                   train_one_epoch ended with to <out>/rank<R>.txt. The model is not wrapped in
                   DDP on purpose: rank 0's own loss stays finite, so only the reduction of the
                   NaN check across ranks can make it stop (with DDP the NaN gradients would
                   reach it anyway).
dropout_masks      each rank seeds itself as `exptrack train` does (run.seed_everything_for_rank),
                   builds a model with dropout, wraps it in DDP and draws one training forward
                   pass; rank 0 writes every rank's dropout mask and initial weights to
                   <out>/ranks.pt.
validation_shards  each rank reads its EvaluationShard of n clips through a DataLoader, as
                   validation does, and gathers the clip indices with gather_shards; rank 0
                   writes, per n, the gathered indices and each rank's count to <out>/shards.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from exptrack.data.sampling import EvaluationShard
from exptrack.device import Placement
from exptrack.training import distributed
from exptrack.training.loop import NonFiniteLossError, train_one_epoch
from exptrack.training.run import seed_everything_for_rank

NAN_RANK, NAN_BATCH, BATCHES, SYNC_EVERY = 1, 3, 6, 2


class NanOnOneRank(nn.Module):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank, self.calls = rank, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = F.cross_entropy(logits, target)
        return loss * float("nan") if (self.rank == NAN_RANK and self.calls == NAN_BATCH) else loss


def nan_on_one_rank(out: Path) -> None:
    env = distributed.init_distributed(torch.device("cpu"))
    torch.manual_seed(env.rank)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 3))  # input (B, 3, T=2, 4, 4)
    batches = [{"video": torch.randint(0, 256, (4, 2, 4, 4, 3), dtype=torch.uint8),  # (B, T, H, W, 3)
                "label": torch.randint(0, 3, (4,))} for _ in range(BATCHES)]
    try:
        train_one_epoch(model, batches, NanOnOneRank(env.rank), torch.optim.SGD(model.parameters(), lr=0.1),
                        Placement(torch.device("cpu")), progress=False, sync_every=SYNC_EVERY)
        message = "finished"
    except NonFiniteLossError as exc:
        message = str(exc)
    (out / f"rank{env.rank}.txt").write_text(message)
    distributed.cleanup()


def dropout_masks(out: Path) -> None:
    env = distributed.init_distributed(torch.device("cpu"))
    seed_everything_for_rank(42, env)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.5)))
    with torch.no_grad():
        weights = model.module[0].weight.clone()
        mask = model(torch.ones(1, 8)) != 0  # (1, 64): which units this rank's dropout kept
    gathered = distributed.gather_objects({"mask": mask, "weights": weights})
    if env.is_main:
        torch.save(gathered, out / "ranks.pt")
    distributed.cleanup()


def validation_shards(out: Path) -> None:
    env = distributed.init_distributed(torch.device("cpu"))
    result = {}
    for n in (7, 2, 9):  # uneven, fewer clips than ranks, even
        loader = DataLoader(list(range(n)), sampler=EvaluationShard(n, env.rank, env.world_size), batch_size=2)
        mine = torch.cat([batch for batch in loader])
        counts = distributed.gather_objects(len(mine))
        result[n] = {"gathered": distributed.gather_shards(mine, n, torch.device("cpu")), "counts": counts}
    if env.is_main:
        torch.save(result, out / "shards.pt")
    distributed.cleanup()


PROGRAMS = {f.__name__: f for f in (nan_on_one_rank, dropout_masks, validation_shards)}

if __name__ == "__main__":
    PROGRAMS[sys.argv[1]](Path(sys.argv[2]))
    # Leave without the interpreter's and C++'s exit-time teardown: with torch 2.14.1, a process
    # that computed anything and used a gloo group aborted there ("terminate called without an
    # active exception", SIGABRT) in about one run in three, after destroy_process_group,
    # whatever this file did (measured on 2026-11-26 with a 12-line script).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
