"""Progress bars, on a terminal only.

Redirected output (`mlflow run`, CI, a log file) would fill with a bar's carriage-return
frames; there the commands log one line per epoch or phase instead.
"""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(items: Iterable[T], desc: str, unit: str, enabled: bool = True, **kwargs) -> Iterable[T]:
    """tqdm over `items` when `enabled` and stderr is a terminal; otherwise a silent tqdm (it
    still supports set_postfix, so callers need no branch)."""
    return tqdm(items, desc=desc, unit=unit, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True,
                **kwargs)
