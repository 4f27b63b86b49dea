"""A pytest plugin (loaded by conftest.py): the session fails if a process it started outlives
it, e.g. an `mlflow server`, a PostgreSQL server or a worker a test forgot to stop.

Checked in `pytest_sessionfinish`, after every fixture's finalizer has run. Processes that
belong to the interpreter rather than to a test are not counted: multiprocessing's resource
tracker and joblib's reusable worker pool (scikit-learn), which end with the interpreter.
"""

from __future__ import annotations

import time

import psutil

INTERPRETER_OWNED = ("multiprocessing.resource_tracker", "joblib.externals.loky", "loky.backend")
GRACE_S = 15.0  # a process stopped by a finalizer may take a moment to be reaped


def leftover_children() -> list[psutil.Process]:
    """Live descendants of this process that a test started."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if not any(owner in cmdline for owner in INTERPRETER_OWNED):
            out.append(child)
    return out


def pytest_sessionfinish(session, exitstatus) -> None:
    deadline = time.monotonic() + GRACE_S
    left = leftover_children()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = leftover_children()
    if not left:
        return
    lines = []
    for proc in left:
        try:
            lines.append(f"  pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()  # the session fails either way; the machine is left clean
        except psutil.NoSuchProcess:
            pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"{len(lines)} process(es) started by the tests outlived the session (now killed):\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_line(message, red=True)
    session.exitstatus = 1
