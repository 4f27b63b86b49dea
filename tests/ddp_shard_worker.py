"""Started by tests/test_train.py under torchrun (CPU processes, gloo): each rank reads its
EvaluationShard of n clips through a DataLoader, as validation does, and gathers the clip
indices with gather_shards. Rank 0 writes, per n, the gathered indices and each rank's count to
<out>/shards.pt."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from exptrack.data.sampling import EvaluationShard
from exptrack.training import distributed


def main(out: Path) -> None:
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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as ddp_nan_worker.py: no exit-time teardown (gloo may abort there)
