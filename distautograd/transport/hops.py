"""Where a backward hop's time goes on one worker (arrival, decoded, part started, engine, encoded, sent), stamped only while the bench records.

A hop is one push of gradients read, run through this worker's part of the graph, and the push it
set off sent on. The reader stamps a frame's arrival on its thread; the backward protocol, which
runs the push on that same thread, adds the rest and files the hop. Stamps are CLOCK_MONOTONIC,
the same clock in every process of a host, so a push sent by one worker and read by the next
gives the hand-over between them (bench: ``hop_breakdown``). Off, each frame costs one
test of ``ON``.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Tuple

ON = False
MAX_HOPS = 100_000  # a recording left on forgets nothing it keeps, and keeps no more than this

Key = Tuple[int, int, int]  # context id, pass id, first message id of a push
_hops: List[dict] = []
_lock = threading.Lock()
_here = threading.local()


def start() -> None:
    """Forgets what was recorded and records from now on (every thread of this process)."""
    global ON
    with _lock:
        _hops.clear()
    ON = True


def stop() -> List[dict]:
    """Stops recording; the hops recorded, each a dict of stage -> seconds and ``in``/``out`` keys."""
    global ON
    ON = False
    with _lock:
        out, _hops[:] = list(_hops), []
    return out


def arrived() -> None:
    """A frame was read on this thread: what it sets off here is timed from now."""
    _here.stamps = {"arrived": time.monotonic()}


def received(key: Key) -> None:
    """The frame read was the push ``key``, decoded now."""
    stamps = _stamps()
    stamps["in"] = key
    stamps["decoded"] = time.monotonic()


def at(stage: str) -> None:
    _stamps()[stage] = time.monotonic()


def sent(key: Key) -> None:
    """The push ``key`` went out: the hop ends here and is kept."""
    stamps = _stamps()
    stamps["sent"] = time.monotonic()
    stamps["out"] = key
    _here.stamps = {}
    with _lock:
        if len(_hops) < MAX_HOPS:
            _hops.append(stamps)


def _stamps() -> Dict[str, object]:
    stamps: Optional[dict] = getattr(_here, "stamps", None)
    if stamps is None:
        stamps = _here.stamps = {}
    return stamps
