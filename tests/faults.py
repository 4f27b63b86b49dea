"""Fault injection shared by the tests."""

from __future__ import annotations


class KillAfter:
    """An epoch callback that stops the process (as Ctrl-C would) after epoch `n`."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, metrics, per_class, saved, state) -> None:
        if state.epoch == self.n:
            raise KeyboardInterrupt
