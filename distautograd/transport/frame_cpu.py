"""The CPU time a reading thread spends per frame: reading it, and each stage of what it sets off there; kept only while the bench records.

A socket's reading thread (the sockets transport's; gRPC's streams are not counted) reads a frame
(the core's read, or Python's) and then runs what it sets off on the same thread: a call it runs
itself, a reply it decodes and hands to the caller, a push it runs through this worker's part of a
backward. This module adds up both parts in thread CPU time, which leaves out the time the thread
slept waiting for bytes, and, where the code that runs marks its stages (``stamp``: a call's
dispatch, decoding, run and encoding), the time between one mark and the next. So the bench can say
where a small call's CPU goes on each side (``python -m distautograd.bench --only latency``). Off,
each frame and each stage costs one test of ``ON``. Open: in a test of three calls, now and then one
reply's frame is not counted (5 frames of 6, about one run in fifteen); the averages are over the
frames counted, each with its own time, so they do not depend on it.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Tuple

ON = False

READ, END = "read", "end"  # a frame's first stage begins when it was read, its last ends with its handling

_lock = threading.Lock()
_totals = {"frames": 0, "reading": 0.0, "handling": 0.0}
_stages: Dict[Tuple[str, str], float] = {}  # (mark, next mark) -> CPU seconds between them, over every frame
_here = threading.local()


def start() -> None:
    """Forgets what was added up and adds up every frame read from now on (every thread of this process),
    except the next frame of a reading thread that already waits for it: that one is read untimed."""
    global ON
    with _lock:
        _totals.update(frames=0, reading=0.0, handling=0.0)
        _stages.clear()
    ON = True


def stop() -> Dict[str, float]:
    """Stops adding up; the frames read meanwhile and the CPU seconds spent reading them and handling them."""
    global ON
    ON = False
    with _lock:
        return dict(_totals)


def stages() -> Dict[Tuple[str, str], float]:
    """The CPU seconds spent between each two marks that followed each other (from READ to END), over every
    frame read while adding up; only frames whose handling marked stages."""
    with _lock:
        return dict(_stages)


def read() -> None:
    """The frame ``timed`` is reading was read just now: what follows is its handling."""
    _here.read_at = time.thread_time()


def stamp(mark: str) -> None:
    """The handling of the frame this thread reads reached ``mark`` (nothing, on a thread not reading one)."""
    marks: "List[Tuple[str, float]] | None" = getattr(_here, "marks", None)
    if marks is not None:
        marks.append((mark, time.thread_time()))


def timed(read_one: Callable[[], None]) -> None:
    """Runs ``read_one()`` (one frame read and handled, calling ``read()`` in between), adding up its CPU
    time; a read that ends without a frame (the connection closed) is not counted."""
    began = time.thread_time()
    _here.read_at = None
    _here.marks = []
    try:
        read_one()
    finally:
        ended = time.thread_time()
        read_at, _here.read_at = _here.read_at, None
        marks, _here.marks = _here.marks, None
        if read_at is not None:
            with _lock:
                _totals["frames"] += 1
                _totals["reading"] += read_at - began
                _totals["handling"] += ended - read_at
                if marks:
                    marks = [(READ, read_at), *marks, (END, ended)]
                    for (first, at), (then, later) in zip(marks, marks[1:]):
                        _stages[(first, then)] = _stages.get((first, then), 0.0) + later - at
