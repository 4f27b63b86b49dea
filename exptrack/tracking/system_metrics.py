"""MLflow's system metrics (CPU, memory, disk, network, GPU) of a run, kept going through tracking
outages.

MLflow's SystemMetricsMonitor stops for good on the first tracking call that fails (its thread
returns), so after a server blip a long training run logged no system metrics for the rest of its
life while its own metrics kept arriving (the background tracker retries them). A watchdog here
starts a new monitor, resuming at the next step, whenever the old one has stopped while the run is
still going.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from .store import _client

log = logging.getLogger("exptrack.tracking")

@contextmanager
def system_metrics(run_id: str, resumed: bool) -> Iterator[None]:
    """System metrics of `run_id` while the body runs; stopped (and flushed) before it returns, so
    the caller can end the run after. Nothing when MLflow's monitor cannot run here (it says why)."""
    monitor = _started(run_id, resumed)
    if monitor is None:
        yield
        return
    # Checked at the monitor's own pace (10 s unless MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL):
    # a stopped monitor misses about one sample.
    watchdog = _Watchdog(run_id, monitor, float(getattr(monitor, "sampling_interval", 10.0)))
    watchdog.start()
    try:
        yield
    finally:
        watchdog.stop()


def _started(run_id: str, resumed: bool) -> Any | None:
    """A started SystemMetricsMonitor of the run (resuming its step when `resumed`), or None."""
    try:
        return _new_monitor(run_id, resumed)
    except Exception as exc:  # noqa: BLE001 - e.g. psutil missing, or the store unreachable: the run goes on
        log.warning("no system metrics for run %s: %s", run_id, exc)
        return None


def _new_monitor(run_id: str, resumed: bool) -> Any:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed)
    monitor.start()
    return monitor


def _stopped(monitor: Any) -> bool:
    """Whether the monitor's thread has returned (MLflow ends it on a failed tracking call). Its
    thread is private to MLflow; a monitor without one counts as running (never restarted)."""
    if not hasattr(monitor, "_process"):
        return False
    thread = monitor._process
    return thread is None or not thread.is_alive()


def _store_answers(run_id: str) -> bool:
    """Whether the store answers for the run again: a restart before that would stop at once and,
    unable to read the run's last step, log from step 0 again."""
    try:
        _client().get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 - still away
        return False


class _Watchdog:
    """Restarts the run's monitor whenever it has stopped; `stop` ends both."""

    def __init__(self, run_id: str, monitor: Any, check_every_s: float) -> None:
        self.run_id, self.monitor, self.check_every_s = run_id, monitor, check_every_s
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # `stop` never races a restart: no monitor outlives the run
        self._thread = threading.Thread(target=self._watch, name="exptrack-system-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every_s):
            if not _stopped(self.monitor) or not _store_answers(self.run_id):
                continue
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self.monitor = _new_monitor(self.run_id, resumed=True)
                except Exception:  # noqa: BLE001 - the next check tries again
                    continue
                self.restarts += 1
                log.log(logging.INFO if self.restarts == 1 else logging.DEBUG,
                        "system metrics of run %s restarted after a tracking failure (%d)", self.run_id, self.restarts)

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            self.monitor.finish()
        # A check waiting on an unreachable store wakes later and returns then (a daemon thread).
        self._thread.join(timeout=5)
