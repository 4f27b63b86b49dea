"""How long the training step waits for the loader, and a warning when the GPU (or CPU) starves.

The step's wait is the host time spent in the loader's `next()`; the loader's own cost is the
time its workers spent making the clips (each batch carries it as `load_seconds`, measured in
the worker). Both are host clocks and CPU tensors: measuring adds no device synchronisation.
With the wait and the cost, an epoch reports three figures:

- `data_wait_fraction`: share of the epoch's wall time the step waited for a batch;
- `loader_clips_per_s`: what the loader's workers can make together when never idle
  (clips per worker-second of making, times the workers);
- `step_clips_per_s`: what the step consumes when data is ready (clips per second of the
  epoch not spent waiting).

A loader slower than the step shows as a wait fraction well above 0 and a loader figure below
the step's; then `train.num_workers` (or the cores behind it) is what limits training.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch

log = logging.getLogger("exptrack.train")

# Share of an epoch the step may spend waiting for data before the run warns (issue 23).
STARVED = 0.10


class DataClock:
    """An iterable over `loader` that times the waits in `next()` and sums the batches'
    `load_seconds`. The first batch of an epoch is kept apart: it includes starting the
    workers (persistent workers: the first epoch only), which more workers would not shorten."""

    def __init__(self, loader: Iterable[dict[str, Any]]) -> None:
        self.loader = loader
        self.wait = 0.0  # seconds in next(), all batches
        self.first_wait = 0.0  # of those, the first batch's
        self._load = 0.0  # worker-seconds spent making the clips, of the batches settled
        self._unsettled: list[torch.Tensor] = []  # the other batches' load_seconds
        self.clips = 0
        self.batches = 0

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]  # tqdm's total, when the loader has one

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = iter(self.loader)
        while True:
            began = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            waited = time.perf_counter() - began
            self.wait += waited
            if self.batches == 0:
                self.first_wait = waited
            self.batches += 1
            self.clips += len(batch["label"])
            if "load_seconds" in batch:
                self._unsettled.append(batch["load_seconds"])
            yield batch

    @property
    def load(self) -> float:
        """Worker-seconds spent making the clips so far. Read at the checks only: the tensors are
        on the CPU (no device wait), but a read per step is what the step loop avoids (and what
        bench/hostsync.py counts off a GPU)."""
        if self._unsettled:
            self._load += float(torch.cat(self._unsettled).sum())
            self._unsettled.clear()
        return self._load

    def steady_wait_fraction(self, seconds: float) -> float:
        """The share of `seconds` spent waiting, leaving out the first batch (worker start-up)."""
        steady = seconds - self.first_wait
        return (self.wait - self.first_wait) / steady if steady > 0 else 0.0

    def figures(self, seconds: float, workers: int) -> dict[str, float]:
        """The epoch's data-wait metrics after `seconds` of wall time."""
        busy = max(seconds - self.wait, 1e-9)
        figures = {"data_wait_fraction": self.wait / max(seconds, 1e-9), "step_clips_per_s": self.clips / busy}
        load = self.load
        if load > 0:  # batches that carry their making time (ClipDataset's)
            figures["loader_clips_per_s"] = self.clips / load * max(workers, 1)
        return figures


@dataclass
class StarvationAlarm:
    """Warns once per run, at the first `sync_every` check (or epoch end) where the step has
    waited for data more than STARVED of the epoch so far, leaving out the first batch's wait
    (worker start-up). The warning names train.num_workers and how many would keep up."""

    workers: int
    threshold: float = STARVED
    warned: bool = False

    def check(self, clock: DataClock, seconds: float, epoch: int) -> None:
        if self.warned or clock.batches < 2 or clock.steady_wait_fraction(seconds) <= self.threshold:
            return
        self.warned = True
        log.warning("%s", self.message(clock, seconds, epoch))

    def message(self, clock: DataClock, seconds: float, epoch: int) -> str:
        f = clock.figures(seconds, self.workers)
        loader = f.get("loader_clips_per_s", math.nan)
        per_worker = loader / max(self.workers, 1)
        cores = os.cpu_count() or 1
        advice = f"raise train.num_workers (now {self.workers})"
        if math.isfinite(per_worker) and per_worker > 0:
            needed = math.ceil(f["step_clips_per_s"] / per_worker)
            advice += f"; about {needed} would keep up"
            if needed > cores:
                advice += (f", more than this machine's {cores} cores: a smaller data.frame_size or lighter "
                           "augmentation also helps")
        return (f"epoch {epoch}: the training step waited for data {clock.steady_wait_fraction(seconds):.0%} of the "
                f"time so far, worker start-up left out (loader {loader:.0f} clips/s with {self.workers} worker(s), "
                f"{per_worker:.0f} per worker; the step {f['step_clips_per_s']:.0f} clips/s): {advice}. "
                "The data_wait_fraction metric shows every epoch's share")
