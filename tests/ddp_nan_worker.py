"""Started by tests/test_train.py under torchrun (CPU processes, gloo): the loss of rank 1 alone
becomes NaN at batch 3. Each rank writes what train_one_epoch ended with to <out>/rank<R>.txt.

The model is not wrapped in DDP on purpose: rank 0's own loss stays finite, so only the
reduction of the NaN check across ranks can make it stop (with DDP the NaN gradients would
reach it anyway)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from exptrack.device import Placement
from exptrack.training import distributed
from exptrack.training.loop import NonFiniteLossError, train_one_epoch

NAN_RANK, NAN_BATCH, BATCHES, SYNC_EVERY = 1, 3, 6, 2


class NanOnOneRank(nn.Module):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank, self.calls = rank, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = F.cross_entropy(logits, target)
        return loss * float("nan") if (self.rank == NAN_RANK and self.calls == NAN_BATCH) else loss


def main(out: Path) -> None:
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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # Leave without the interpreter's and C++'s exit-time teardown: with torch 2.14.1, a process
    # that computed anything and used a gloo group aborted there ("terminate called without an
    # active exception", SIGABRT) in about one run in three, after destroy_process_group,
    # whatever this file did (measured on 2026-11-26 with a 12-line script).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
