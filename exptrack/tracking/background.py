"""Training that does not wait on tracking: a run's tracking calls made by one worker thread in
order, each retried through an outage until delivered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any



log = logging.getLogger("exptrack.tracking")


class BackgroundTracker:
    """Tracking calls of a run made by one worker thread, in the order given, so that training
    never waits on the tracking server.

    Each submitted call is retried until it succeeds (backoff up to `max_wait_s`), and only then
    is the next one made: during an outage epochs keep advancing and calls queue up (small:
    metric rows, file paths); when the server is back they arrive in order, each once. `drain`
    at the end waits for the queue, and says what could not be delivered.
    """

    def __init__(self, run_id: str, max_wait_s: float = 10.0) -> None:
        self.run_id, self.max_wait_s = run_id, max_wait_s
        self.failures = 0  # failed attempts (an outage of N retries counts N)
        self._items: deque[tuple[str, Any]] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._work, name="exptrack-tracking", daemon=True)
        self._thread.start()

    def submit(self, what: str, call: Any) -> None:
        with self._cv:
            self._items.append((what, call))
            self._cv.notify_all()

    def pending(self) -> list[str]:
        with self._cv:
            return [what for what, _ in self._items]

    def _work(self) -> None:
        wait, outage = 0.5, False
        while True:
            with self._cv:
                while not self._items and not self._closing:
                    self._cv.wait()
                if not self._items or (self._closing and self._deadline_passed()):
                    return  # a drain that timed out: what is left stays undelivered (a resume delivers it)
                what, call = self._items[0]
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - any tracking failure: keep it, retry, never raise
                self.failures += 1
                if not outage:
                    log.warning("MLflow tracking failed (%s: %s); training goes on, the tracking calls queue up and "
                                "are retried", what, (str(exc).splitlines() or [""])[0][:200])
                outage = True
                with self._cv:
                    self._cv.wait(timeout=wait)  # a drain's close wakes it early
                    if self._closing and self._deadline_passed():
                        return
                wait = min(wait * 2, self.max_wait_s)
                continue
            if outage:
                log.warning("MLflow tracking is back: delivering what queued up")
            wait, outage = 0.5, False
            with self._cv:
                self._items.popleft()
                self._cv.notify_all()

    def _deadline_passed(self) -> bool:
        return time.monotonic() > self._deadline

    def drain(self, timeout_s: float) -> list[str]:
        """Wait until every call is delivered or `timeout_s` has passed; returns what was not
        delivered (the worker stops either way)."""
        self._deadline = time.monotonic() + timeout_s
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            while self._items and not self._deadline_passed():
                self._cv.wait(timeout=0.5)
            left = [what for what, _ in self._items]
        self._thread.join(timeout=max(0.0, self._deadline - time.monotonic()) + 1.0)
        return left
