"""SIGTERM and SIGINT: stop cleanly, say so, and leave nothing RUNNING.

Cloud and cluster jobs end with SIGTERM (spot instances, SLURM time limits, Kubernetes
evictions), a user with Ctrl-C. `installed()` (the CLI runs every command in it) turns the first such signal into
`Preempted`, raised where it is safe:

- inside `deferred()` (the training loop) the signal only sets a flag; the loop raises at its
  next batch boundary (`check()`), so a step, a checkpoint write or a tracking hand-over is never
  cut in half;
- anywhere else it is raised at once, as Python raises KeyboardInterrupt.

`Preempted` is a BaseException: no `except Exception` swallows it. The run it stops ends KILLED
with the tag `exptrack.preempted=<signal>` (tracking.start_run), and the command exits 128 +
the signal number (143 for SIGTERM, 130 for SIGINT). A second signal while the first is being
handled exits at once: every file exptrack writes is written atomically, so nothing is corrupted.
Under torchrun a Ctrl-C reaches the ranks once: they run in sessions of their own, so only
torchrun's forwarded signal reaches them (tests/test_preemption.py checks it).
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
PREEMPTED_TAG = "exptrack.preempted"  # on a run a signal stopped: the signal's name
class _Signals:
    requested: int | None = None  # the first signal's number
    deferred: int = 0  # depth of deferred()


_state = _Signals()


class Preempted(BaseException):
    """The process was asked to stop (SIGTERM or SIGINT)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.killed_runs: list[str] = []  # the runs it ended KILLED on its way up (tracking adds them)
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum: int, frame) -> None:
    if _state.requested is not None:  # the second signal: the user insists
        os._exit(128 + signum)
    _state.requested = signum
    if not _state.deferred:
        raise Preempted(signum)


@contextmanager
def installed() -> Iterator[None]:
    """Handle SIGTERM and SIGINT as above within (in the main thread; a no-op elsewhere); the
    previous handlers, and no pending signal, afterwards (a process that calls the CLI in-process,
    such as a test session, gets its own handling back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        reset()


def reset() -> None:
    """Forget a handled signal (a test that sends several in one process)."""
    _state.requested = None


def requested() -> int | None:
    return _state.requested


def check() -> None:
    """Raise Preempted if a signal came (the loop's batch boundaries)."""
    if _state.requested is not None:
        raise Preempted(_state.requested)


@contextmanager
def deferred() -> Iterator[None]:
    """Signals only set the flag within; `check()` raises at the caller's safe points, and
    leaving the block with a signal pending raises too."""
    _state.deferred += 1
    try:
        yield
    finally:
        _state.deferred -= 1
    check()
