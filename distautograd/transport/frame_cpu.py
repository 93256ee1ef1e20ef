"""The CPU time a reading thread spends per frame: reading it, and each stage of what it sets off there; kept only while the bench records.

A socket's reading thread (the sockets transport's; gRPC's streams are not counted) reads a frame
(the core's read, or Python's) and then runs what it sets off on the same thread: a call it runs
itself, a reply it decodes and hands to the caller, a push it runs through this worker's part of a
backward (but not one the core reads and runs into a started part in one call: there is no point
between its reading and its handling to split at, so it is left out). This module adds up both parts
in thread CPU time, which leaves out the time the thread slept waiting for bytes, and, where the code
that runs marks its stages (``stamp``: a call's dispatch, decoding, run and encoding), the time between
one mark and the next. So the bench can say where a small call's CPU goes on each side (``python -m
distautograd.bench --only latency``). Off, each frame and each stage costs one test of ``ON``.
``stop`` waits for the frames read meanwhile that are still being handled: a reply's reader wakes its
caller before it is done with the frame, and the caller may stop the adding up first (one reply of
three went uncounted now and then).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Tuple

ON = False

READ, END = "read", "end"  # a frame's first stage begins when it was read, its last ends with its handling

STOP_WAIT_SECONDS = 1.0  # the longest stop() waits for frames still being handled

_lock = threading.Lock()
_settled = threading.Condition(_lock)  # notified as each frame's handling is added up
_open = 0  # frames read while on whose handling is not added up yet
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
    """Stops adding up; the frames read meanwhile and the CPU seconds spent reading them and handling them.
    Waits (up to STOP_WAIT_SECONDS) for those still being handled on other threads; one this thread is
    handling (stop called by a call it read) is not counted."""
    global ON
    ON = False
    mine = 1 if getattr(_here, "read_at", None) is not None else 0
    with _settled:
        _settled.wait_for(lambda: _open <= mine, STOP_WAIT_SECONDS)
        return dict(_totals)


def stages() -> Dict[Tuple[str, str], float]:
    """The CPU seconds spent between each two marks that followed each other (from READ to END), over every
    frame read while adding up; only frames whose handling marked stages."""
    with _lock:
        return dict(_stages)


def read() -> None:
    """The frame ``timed`` is reading was read just now: what follows is its handling."""
    global _open
    if getattr(_here, "marks", None) is None:
        return  # not inside timed(): this read began before the adding up did
    _here.read_at = time.thread_time()
    with _lock:
        _open += 1


def stamp(mark: str) -> None:
    """The handling of the frame this thread reads reached ``mark`` (nothing, on a thread not reading one)."""
    marks: "List[Tuple[str, float]] | None" = getattr(_here, "marks", None)
    if marks is not None:
        marks.append((mark, time.thread_time()))


def timed(read_one: Callable[[], None]) -> None:
    """Runs ``read_one()`` (one frame read and handled, calling ``read()`` in between), adding up its CPU
    time; a read that ends without a frame (the connection closed) is not counted."""
    global _open
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
            with _settled:
                _open -= 1
                _totals["frames"] += 1
                _totals["reading"] += read_at - began
                _totals["handling"] += ended - read_at
                if marks:
                    marks = [(READ, read_at), *marks, (END, ended)]
                    for (first, at), (then, later) in zip(marks, marks[1:]):
                        _stages[(first, then)] = _stages.get((first, then), 0.0) + later - at
                _settled.notify_all()
