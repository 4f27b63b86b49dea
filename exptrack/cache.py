"""The `cache` command, an MLflow run: every video decoded once into the frame cache
(data/cache.py), optionally pruning what the config does not use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import tracking
from .config import Config
from .data.cache import CacheNeed
from .data.prepare import PreparedData, prepare_data


@dataclass(frozen=True)
class CacheResult:
    data: PreparedData
    size_bytes: int  # of the whole cache folder's entries
    pruned: tuple[int, int] | None  # (entries removed, bytes freed) with prune
    run_id: str


def run_cache(config: Config, prune: bool = False,
              on_need: Callable[[CacheNeed], None] | None = None) -> CacheResult:
    """The `exptrack cache` command: every video (and masks, keypoints, attention) decoded into
    the cache, as an MLflow run that records the config, the sizes and the warnings. `on_need`
    hears what will be written before anything is."""
    with tracking.start_run(config, run_name="cache", command="cache") as run:
        data = prepare_data(config, progress=True, on_need=on_need)
        pruned = data.cache.prune() if prune and data.cache is not None else None
        size = sum(p.stat().st_size for p in Path(config.paths.cache).rglob("*.npy"))  # what stays
        run.set_tags({"data_root": data.layout.root, "data_digest": data.digest()})
        run.log_metrics({"cache_bytes": size, **{f"clips_{s}": len(ix) for s, ix in data.splits.items()},
                         **({"pruned_entries": pruned[0], "pruned_bytes": pruned[1]} if pruned else {}),
                         **{f"data_warnings_{k}": v for k, v in data.warnings.counts.items()}})
    return CacheResult(data, size, pruned, run.id)
