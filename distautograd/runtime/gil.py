"""How long a thread of this process waits to take the GIL, sampled (torch's enable_gil_profiling).

torch times the GIL acquisitions of its RPC threads in C++. From Python the same wait is seen by
letting go of the GIL and taking it back: ``time.sleep(0)`` does exactly that, and the time it
takes is the wait for the GIL (the call itself is a few hundred nanoseconds). While profiling is
on, one thread does it every ``INTERVAL`` and keeps the average.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

INTERVAL = 0.005


class GilSampler:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0.0
        self._samples = 0
        self._stop: Optional[threading.Event] = None

    def enable(self, on: bool) -> None:
        with self._lock:
            if on and self._stop is None:
                self._total, self._samples = 0.0, 0
                self._stop = threading.Event()
                threading.Thread(target=self._run, args=(self._stop,), name="distautograd-gil", daemon=True).start()
            elif not on and self._stop is not None:
                self._stop.set()
                self._stop = None

    def average_us(self) -> Optional[float]:
        """The average wait in microseconds since profiling was turned on; None when it is off."""
        with self._lock:
            if self._stop is None:
                return None
            return self._total / self._samples * 1e6 if self._samples else 0.0

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(INTERVAL):
            began = time.perf_counter()
            time.sleep(0)  # lets go of the GIL and waits to take it back
            waited = time.perf_counter() - began
            with self._lock:
                self._total += waited
                self._samples += 1
