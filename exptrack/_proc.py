"""Whether a process of this machine is alive (the one home of this check: the frame cache's
build folders and tune's dead-worker detection both name processes by pid)."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """True while process `pid` exists on this machine (also another user's); a reused pid
    reads as alive, so callers must treat True as "maybe"."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
