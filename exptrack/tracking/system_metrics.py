"""MLflow's system metrics (CPU, memory, disk, network, GPU) of a run, kept going through tracking
outages.

MLflow's SystemMetricsMonitor stops for good on the first tracking call that fails (its thread
returns), so after a server blip a long training run logged no system metrics for the rest of its
life while its own metrics kept arriving (the background tracker retries them). A watchdog here
starts a new monitor, at the step after the old one's, whenever the old one has stopped while the
run is still RUNNING.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .store import _client

log = logging.getLogger("exptrack.tracking")


class SystemMetrics:
    """System metrics of a run, as a context: `start()` inside it (after the run's own end-on-error
    context is entered, so a signal there still ends the run); the monitor stops when the context
    exits, after the run has ended (as MLflow's own end_run does), so that a slow store never
    delays the run's end by the monitor's last flush."""

    def __init__(self, run_id: str, resumed: bool) -> None:
        self.run_id, self.resumed = run_id, resumed
        self._watchdog: _Watchdog | None = None

    def start(self) -> None:
        """Start MLflow's monitor and its watchdog; nothing when the monitor cannot run here (it
        says why)."""
        try:
            monitor = _new_monitor(self.run_id, self.resumed)
        except Exception as exc:  # noqa: BLE001 - e.g. psutil missing, or the store unreachable: the run goes on
            log.warning("no system metrics for run %s: %s", self.run_id, exc)
            return
        self._watchdog = _Watchdog(self.run_id, monitor)
        self._watchdog.start()

    def __enter__(self) -> "SystemMetrics":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()


def _new_monitor(run_id: str, resumed: bool, step: int | None = None) -> Any:
    """A started SystemMetricsMonitor of the run: resuming after the run's last system step
    (`resumed`, read from the store) or at `step` (known here: no store call)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed and step is None)
    if step is not None:
        # MLflow reads the resume step from the store and quietly takes 0 when that fails (the
        # store is often still flapping after an outage): the old monitor's next step is exact.
        monitor._logging_step = step
    monitor.start()
    return monitor


def _stopped(monitor: Any) -> bool:
    """Whether the monitor's thread has returned (MLflow ends it on a failed tracking call, or
    when the run is no longer RUNNING). Its thread is private to MLflow; a monitor without one
    counts as running (never restarted)."""
    if not hasattr(monitor, "_process"):
        return False
    thread = monitor._process
    return thread is None or not thread.is_alive()


def _running(run_id: str) -> bool:
    """Whether the store answers and the run is RUNNING: a restart before the store answers would
    stop at once; one after the run ended would log to a finished run."""
    try:
        return _client().get_run(run_id).info.status == "RUNNING"
    except Exception:  # noqa: BLE001 - still away
        return False


class _Watchdog:
    """Restarts the run's monitor whenever it has stopped while the run runs; `stop` ends both.
    Checked at the monitor's own pace (10 s unless MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL): a
    stopped monitor misses about one sample."""

    def __init__(self, run_id: str, monitor: Any) -> None:
        self.run_id, self.monitor = run_id, monitor
        self.check_every_s = float(getattr(monitor, "sampling_interval", 10.0))
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # held only to swap monitors: `stop` never waits on the store here
        self._thread = threading.Thread(target=self._watch, name="exptrack-system-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every_s):
            if not _stopped(self.monitor) or not _running(self.run_id):
                continue
            with self._lock:
                if self._stop.is_set():  # no monitor starts after stop(): none outlives the run
                    return
                try:
                    self.monitor = _new_monitor(self.run_id, resumed=True, step=int(self.monitor._logging_step))
                except Exception:  # noqa: BLE001 - the next check tries again
                    continue
                self.restarts += 1
            log.log(logging.INFO if self.restarts == 1 else logging.DEBUG,
                    "system metrics of run %s restarted after a tracking failure (%d)", self.run_id, self.restarts)

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            monitor = self.monitor
        monitor.finish()  # its last samples, flushed
        # A check waiting on an unreachable store wakes later and returns then (a daemon thread).
        self._thread.join(timeout=5)
