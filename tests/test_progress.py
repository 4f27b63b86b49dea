"""Progress bars only on a terminal: redirected output gets no carriage-return frames."""

from __future__ import annotations

import io

from exptrack.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # redirected: a log file, CI, mlflow run
    bar = progress_bar(range(3), "x", "item")
    assert list(bar) == [0, 1, 2] and bar.disable
    bar.set_postfix(loss="1.0")  # callers need no branch
    assert "\r" not in __import__("sys").stderr.getvalue()

    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert not progress_bar(range(3), "x", "item", file=terminal).disable
    assert progress_bar(range(3), "x", "item", enabled=False, file=terminal).disable  # --no-progress
