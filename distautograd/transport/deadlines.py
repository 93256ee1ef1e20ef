"""One thread that fires callbacks at their deadlines, so no wait anywhere needs its own timer."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable


class Deadlines:
    def __init__(self, name: str = "distautograd-deadlines"):
        self._heap: list = []
        self._cancelled: set = set()
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def schedule(self, delay: float, callback: Callable[[], None]) -> int:
        """Calls ``callback`` after ``delay`` seconds unless cancelled; returns a handle."""
        handle = next(self._ids)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, handle, callback))
            if self._heap[0][1] == handle:
                self._cond.notify()
        return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            self._cancelled.add(handle)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                _, handle, callback = heapq.heappop(self._heap)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
            try:
                callback()
            except Exception:  # a failing callback must not stop the clock for everyone else
                import logging

                logging.getLogger("distautograd").exception("deadline callback failed")
