"""The CPU time a reading thread spends per frame: reading it, and what it sets off there; kept only while the bench records.

A socket's reading thread (the sockets transport's; gRPC's streams are not counted) reads a frame (the core's read, or Python's) and then runs what it sets
off on the same thread: a call it runs itself, a reply it decodes and hands to the caller, a push
it runs through this worker's part of a backward. This module adds up both parts in thread CPU
time, which leaves out the time the thread slept waiting for bytes, so the bench can say where a
small call's CPU goes on each side (``python -m distautograd.bench --only latency``). Off, each
frame costs one test of ``ON``.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict

ON = False

_lock = threading.Lock()
_totals = {"frames": 0, "reading": 0.0, "handling": 0.0}
_here = threading.local()


def start() -> None:
    """Forgets what was added up and adds up every frame read from now on (every thread of this process)."""
    global ON
    with _lock:
        _totals.update(frames=0, reading=0.0, handling=0.0)
    ON = True


def stop() -> Dict[str, float]:
    """Stops adding up; the frames read meanwhile and the CPU seconds spent reading them and handling them."""
    global ON
    ON = False
    with _lock:
        return dict(_totals)


def read() -> None:
    """The frame ``timed`` is reading was read just now: what follows is its handling."""
    _here.read_at = time.thread_time()


def timed(read_one: Callable[[], None]) -> None:
    """Runs ``read_one()`` (one frame read and handled, calling ``read()`` in between), adding up its CPU
    time; a read that ends without a frame (the connection closed) is not counted."""
    began = time.thread_time()
    _here.read_at = None
    try:
        read_one()
    finally:
        ended = time.thread_time()
        read_at, _here.read_at = _here.read_at, None
        if read_at is not None:
            with _lock:
                _totals["frames"] += 1
                _totals["reading"] += read_at - began
                _totals["handling"] += ended - read_at
