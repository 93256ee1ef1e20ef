"""One thread that fires callbacks at their deadlines, so no wait anywhere needs its own timer.

Most deadlines are cancelled (the call answered in time): cancelling drops the callback at once,
so nothing it refers to outlives the call; cancelled entries at the top of the heap go at once (calls
mostly end in the order they started), the heap is rebuilt when it is mostly dead entries, and the
thread is woken only for a deadline earlier than the one it sleeps until, so a busy process's
calls do not wake it once each.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from typing import Callable, Dict, List

log = logging.getLogger("distautograd")
_COMPACT_AT = 1024


class Deadlines:
    def __init__(self, name: str = "distautograd-deadlines"):
        self._heap: List[list] = []  # [when, handle, callback or None when cancelled]
        self._entries: Dict[int, list] = {}
        self._dead = 0
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._stopped = False
        self._wake_at = -math.inf  # when the thread, waiting, will wake by itself (-inf: it is not waiting)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def schedule(self, delay: float, callback: Callable[[], None]) -> int:
        """Calls ``callback`` after ``delay`` seconds unless cancelled; returns a handle."""
        handle = next(self._ids)
        when = time.monotonic() + delay
        entry = [when, handle, callback]
        with self._cond:
            heapq.heappush(self._heap, entry)
            self._entries[handle] = entry
            if when < self._wake_at:
                self._cond.notify()
        return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            entry = self._entries.pop(handle, None)
            if entry is None:
                return
            entry[2] = None
            self._dead += 1
            while self._heap and self._heap[0][2] is None:
                heapq.heappop(self._heap)
                self._dead -= 1
            if self._dead > _COMPACT_AT and self._dead * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._dead = 0

    def pending(self) -> int:
        with self._cond:
            return len(self._entries)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._wake_at = self._heap[0][0] if self._heap else math.inf
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                    self._wake_at = -math.inf
                if self._stopped:
                    return
                _, handle, callback = heapq.heappop(self._heap)
                if callback is None:
                    self._dead -= 1
                    continue
                del self._entries[handle]
            try:
                callback()
            except Exception:  # a failing callback must not stop the clock for everyone else
                log.exception("deadline callback failed")
