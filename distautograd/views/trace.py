"""One trace of a step: what every worker did for a context, as Chrome trace-event / Perfetto JSON.

Each worker keeps, for a context that asked (``context(trace=...)``), spans (a call it made or
ran, a backward wave, waiting) and the two ends of every message (flow events, drawn as arrows).
Times are this machine's wall clock in µs; ``assemble`` moves each worker's events by its clock's
offset from the owner's (measured when the events are fetched), gives every worker a row of its
own and names it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Dict, Iterable, Iterator, List, Tuple

TAKE_WAIT_SECONDS = 1.0  # how long taking a context's events waits for work still recording them

_lock = threading.Lock()
_settled = threading.Condition(_lock)
_events: Dict[int, List[dict]] = {}  # context id -> this worker's events
_recording: Dict[int, int] = {}  # context id -> pieces of work whose events are not all added yet


def now_us() -> float:
    return time.time_ns() / 1000.0


def span(context_id: int, name: str, start_us: float, end_us: float, category: str, tid=None, **args) -> None:
    """Something that took from ``start_us`` to ``end_us``, on thread ``tid`` (this one if None)."""
    _add(context_id, {"ph": "X", "name": name, "cat": category, "ts": start_us, "dur": max(0.0, end_us - start_us),
                      "args": args}, tid)


def flow(context_id: int, flow_id: int, out: bool, name: str, at_us: float) -> None:
    """One end of a message: ``out`` where it left, else where it arrived (``bp: e`` binds it there)."""
    event = {"ph": "s" if out else "f", "name": name, "cat": "message", "id": flow_id, "ts": at_us}
    if not out:
        event["bp"] = "e"
    _add(context_id, event, None)


def _add(context_id: int, event: dict, tid) -> None:
    event["tid"] = tid if tid is not None else threading.get_ident() % 100000
    with _lock:
        _events.setdefault(context_id, []).append(event)


@contextlib.contextmanager
def recording(context_id: int) -> Iterator[None]:
    """Work whose events are added as it goes and when it ends (handling a push): the pass it
    belongs to may end, and its trace be taken, before it does, so ``take`` waits for it."""
    with _lock:
        _recording[context_id] = _recording.get(context_id, 0) + 1
    try:
        yield
    finally:
        with _lock:
            left = _recording.pop(context_id) - 1
            if left:
                _recording[context_id] = left
            else:
                _settled.notify_all()


def take(context_id: int) -> List[dict]:
    """This worker's events of the context, forgotten here, once work still recording them is done
    (waiting TAKE_WAIT_SECONDS at the most)."""
    with _settled:
        _settled.wait_for(lambda: context_id not in _recording, timeout=TAKE_WAIT_SECONDS)
        return _events.pop(context_id, [])


def forget(context_id: int) -> None:
    with _lock:
        _events.pop(context_id, None)


def assemble(parts: Iterable[Tuple[str, float, List[dict]]]) -> dict:
    """``parts``: (worker, clock offset in µs from the owner's, its events) -> one Chrome trace."""
    trace: List[dict] = []
    for pid, (worker, offset, events) in enumerate(parts):
        trace.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": worker}})
        trace.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        for event in events:
            trace.append({**event, "pid": pid, "ts": event["ts"] - offset})
    return {"traceEvents": trace, "displayTimeUnit": "ms",
            "otherData": {"source": "distautograd", "note": "one row per worker; arrows are messages"}}
