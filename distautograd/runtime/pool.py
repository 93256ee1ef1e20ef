"""The threads that run incoming calls: a queue and a fixed set of threads, with no future per task."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, List

log = logging.getLogger("distautograd")
_STOP = object()


class WorkerPool:
    def __init__(self, threads: int, name: str = "distautograd-call"):
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._stopped = False
        self._busy = 0
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable, *args) -> None:
        if self._stopped:
            raise RuntimeError("the worker pool is shut down")
        self._queue.put((fn, args))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args = item
            with self._lock:
                self._busy += 1
            try:
                fn(*args)
            except BaseException:  # tasks report their own failures; this keeps the thread alive
                log.exception("a task on the worker pool failed")
            finally:
                with self._lock:
                    self._busy -= 1
            # An idle thread must not keep its last task's arguments (tensors, RRefs) alive.
            del item, fn, args

    @property
    def size(self) -> int:
        return len(self._threads)

    def idle(self) -> int:
        with self._lock:
            return len(self._threads) - self._busy

    def shutdown(self) -> None:
        self._stopped = True
        for _ in self._threads:
            self._queue.put(_STOP)
