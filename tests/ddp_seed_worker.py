"""Started by tests/test_train.py under torchrun (CPU processes, gloo): each rank seeds itself as
`exptrack train` does (run.seed_everything_for_rank), builds a model with dropout, wraps it in
DDP and draws one training forward pass. Rank 0 writes every rank's dropout mask and initial
weights to <out>/ranks.pt."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from exptrack.training import distributed
from exptrack.training.run import seed_everything_for_rank


def main(out: Path) -> None:
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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as ddp_nan_worker.py: no exit-time teardown (gloo may abort there)
