"""How bad input is reported: a DataError that names the file, or a counted warning."""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter, defaultdict
from pathlib import Path

log = logging.getLogger("exptrack.data")


class DataError(ValueError):
    """Input that cannot be used; the message names the file (and line where it applies)."""


def require_file(path: Path, what: str) -> Path:
    """`path`, or DataError unless it is a regular file. A FIFO or device named like a video or
    a CSV would block the first read for ever; a folder would fail deep inside a decoder."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise DataError(f"{path}: {what} is {kind}, not a regular file")
    return path


class DataWarnings:
    """Counts problems that are safe to skip, so that none of them passes silently.

    Each kind is logged the first few times it happens; `summary()` gives the totals, which
    commands print at the end and training logs as run tags.
    """

    def __init__(self, log_first: int = 3) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.log_first = log_first

    def warn(self, kind: str, message: str, count: int = 1) -> None:
        self.counts[kind] += count
        seen = len(self.examples[kind])
        if seen < max(self.log_first, 1):  # always keep one example, even when not logging
            self.examples[kind].append(message)
        if seen < self.log_first:
            log.warning("%s", message)

    def __getitem__(self, kind: str) -> int:
        return self.counts[kind]

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        if not self.counts:
            return "no data warnings"
        return "data warnings: " + ", ".join(f"{kind}={n}" for kind, n in sorted(self.counts.items()))
