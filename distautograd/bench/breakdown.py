"""Where one backward hop's time goes, from the stamps every worker of a chain took (transport.hops).

A hop: a push of gradients arrives at a worker (its frame read), is decoded, starts the worker's part of
the pass where it is the part's first push (its plan read, its send points looked up, the part planned
and registered: Python), runs through the part (the engine), the push it sets off is encoded and handed to the socket;
the next worker wakes and reads it. The stages are medians over every hop of a run, in
microseconds. The hand-over pairs each hop's ``encoded`` with the ``arrived`` of the push it sent,
on the worker that read it (one clock for every process of a host): the next worker may read the
push before the sender's send call has returned, so the sender's own ``sent`` time is shown beside
the hop, not added to it.
"""

from __future__ import annotations

import statistics
from typing import Dict, Iterable, List

STAGES = [  # (name, from stamp, to stamp): one after the other on the worker's thread
    ("arrival to decoded", "arrived", "decoded"),
    ("the worker's part started (Python; 0 where it had)", "decoded", "started"),
    ("engine", "started", "engine"),
    ("encoded", "engine", "encoded"),
]
HANDED_OVER = "encoded to read by the next worker"
SENDING = "the send call, on the sender (overlaps the above)"
WHOLE_MEDIAN = "a whole hop, read to next read: median"  # the slow hops the stage medians leave out
WHOLE_MEAN = "a whole hop, read to next read: mean"
STARTING = "  a whole hop that starts the part: median"
INTO_STARTED = "  a whole hop into a part already started: median"


def summarize(hops: Iterable[dict]) -> Dict[str, float]:
    """Median microseconds per stage, the hand-over, their sum per hop, the send call's own time, the
    whole hop's median for hops that start the worker's part and for those into a part already started,
    and how many hops were seen. Hops that did not start with a frame read (the root's first push) are
    left out; a hop into a started part spends nothing starting it."""
    hops = [h if "started" in h else {**h, "started": h["decoded"], "starts": False}
            for h in hops if "arrived" in h and "in" in h and "sent" in h]
    if not hops:
        raise ValueError("no hop was recorded: was the recording on in every worker, over sockets?")
    arrivals = {tuple(h["in"]): h["arrived"] for h in hops}
    out = {name: _median_us(h[b] - h[a] for h in hops) for name, a, b in STAGES}
    out[HANDED_OVER] = _median_us(arrivals[tuple(h["out"])] - h["encoded"] for h in hops if tuple(h["out"]) in arrivals)
    out["per hop"] = sum(out[name] for name, _, _ in STAGES) + out[HANDED_OVER]
    paired = [h for h in hops if tuple(h["out"]) in arrivals]
    whole = [arrivals[tuple(h["out"])] - h["arrived"] for h in paired]
    out[WHOLE_MEDIAN] = _median_us(whole)
    out[WHOLE_MEAN] = statistics.fmean(whole) * 1e6 if whole else float("nan")
    out[STARTING] = _median_us(t for h, t in zip(paired, whole) if h.get("starts", True))
    out[INTO_STARTED] = _median_us(t for h, t in zip(paired, whole) if not h.get("starts", True))
    out[SENDING] = _median_us(h["sent"] - h["encoded"] for h in hops)
    out["hops"] = len(hops)
    out["hops that start the part"] = sum(h.get("starts", True) for h in hops)
    return out


def _median_us(seconds: Iterable[float]) -> float:
    values: List[float] = list(seconds)
    return statistics.median(values) * 1e6 if values else float("nan")
