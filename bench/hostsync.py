"""Which batches of a training loop made the host wait for the device (for bench/gpu.py and the
tests; not part of the package).

A step that reads a device tensor on the host (`.item()`, `bool(t)`, `.tolist()`, `.cpu()`...)
waits for every kernel queued before it, so the GPU idles while Python prepares the next step.
`record_syncs` notes the batch number at each such read:

- on CUDA through `torch.cuda.set_sync_debug_mode("warn")`, which warns at every synchronising
  CUDA call wherever it comes from;
- elsewhere (no such mode exists) by counting the tensor-to-Python conversions that exptrack's
  own code makes, the calls that would synchronise on CUDA. Give it batches already in host
  memory (a list), not a loader whose Dataset runs in this process: the Dataset's reads of its
  own CPU tensors would be counted too.

`check_syncs` turns that into a verdict for train_one_epoch, which may read the device only at
its checks (every `sync_every` batches and after the last).
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

import exptrack

PACKAGE_DIR = str(Path(exptrack.__file__).resolve().parent)  # the calls counted are those made in exptrack/
_CONVERSIONS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")
_CUDA_SYNC_MESSAGE = "called a synchronizing CUDA operation"


class StepCounter:
    """An iterable that hands out `iterable`'s items and knows how many it has handed out."""

    def __init__(self, iterable: Iterable) -> None:
        self.iterable = iterable
        self.step = 0  # 1-based number of the batch being processed; 0 before the first

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            self.step += 1
            yield item


@contextmanager
def _cuda_sync_warnings(on_sync: Callable[[], None]) -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.simplefilter("always")
        show = warnings.showwarning

        def hook(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            if _CUDA_SYNC_MESSAGE in str(message):
                on_sync()
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)


@contextmanager
def _host_reads(on_read: Callable[[], None]) -> Iterator[None]:
    """Count Tensor -> Python conversions called from exptrack's code (not from torch's own)."""
    saved = {name: torch.Tensor.__dict__.get(name) for name in _CONVERSIONS}

    def counted(original: Callable) -> Callable:
        def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN202
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE_DIR):
                on_read()
            return original(self, *args, **kwargs)
        return wrapper

    for name in _CONVERSIONS:
        setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    try:
        yield
    finally:
        for name, original in saved.items():
            if original is None:
                delattr(torch.Tensor, name)  # it was inherited from torch._C.TensorBase
            else:
                setattr(torch.Tensor, name, original)


@contextmanager
def record_syncs(device: torch.device, counter: StepCounter) -> Iterator[list[int]]:
    """A list that receives `counter.step` at every host synchronisation inside the block."""
    events: list[int] = []
    probe = _cuda_sync_warnings if device.type == "cuda" else _host_reads
    with probe(lambda: events.append(counter.step)):
        yield events


@dataclass(frozen=True)
class SyncCheck:
    """Where a train_one_epoch of `batches` batches synchronised, against where it may."""

    batches: int
    sync_every: int
    at: tuple[int, ...]  # the batch being processed at each sync (0: before the first batch)
    method: str

    @property
    def allowed(self) -> set[int]:
        checks = set(range(self.sync_every, self.batches + 1, self.sync_every)) if self.sync_every > 0 else set()
        return {0, self.batches} | checks

    @property
    def unexpected(self) -> list[int]:
        return sorted({b for b in self.at if b not in self.allowed})

    @property
    def ok(self) -> bool:
        return not self.unexpected

    def summary(self) -> str:
        where = ", ".join(str(b) for b in sorted(set(self.at))) or "none"
        verdict = "pass" if self.ok else f"FAIL: syncs outside the checks at batches {self.unexpected}"
        return (f"{verdict}; {len(self.at)} syncs over {self.batches} batches, at batches {where} "
                f"(checks every {self.sync_every}; {self.method})")


def check_syncs(run_epoch: Callable[[Iterable], Any], batches: Iterable, device: torch.device,
                sync_every: int) -> SyncCheck:
    """Run `run_epoch(loader)` once over `batches` and record where it synchronised."""
    counter = StepCounter(batches)
    with record_syncs(device, counter) as events:
        run_epoch(counter)
    method = ("torch.cuda.set_sync_debug_mode('warn')" if device.type == "cuda"
              else "tensor-to-Python reads in exptrack code")
    return SyncCheck(counter.step, sync_every, tuple(events), method)
