"""One creation order per worker, whichever thread made a node: what "latest-created first" compares.

torch numbers autograd nodes from a counter of the thread that makes them (at::sequence_number is
thread_local), and a worker makes graph on many threads: calls and pushes run on the thread that
read them, reading moves to another thread when a call waits or runs long (transport.reading),
and every connection has its own reader. Numbers from two threads say nothing about which node
came first, yet gradients that meet are summed latest-created first (engine.local_pass), and
torch's engine runs ready nodes highest number first.

So a worker gives each thread's nodes places in one order of its own, with ``Node._set_sequence_nr``:
a thread's nodes numbered [mark, now) by its counter take the next (now - mark) places after all
places given so far, in the order its counter made them (``place``). A thread places what it
made before another thread can meet it: a tensor it sends, its recv points, what a call it ran
returns, the gradients a pass it ran with create_graph leaves behind. A node that has a place (or
torch's own largest number, an AccumulateGrad) is left as it is, and so is everything below it.
"""

from __future__ import annotations

import bisect
import threading
from typing import Iterable, List, Tuple

import torch

BASE = 1 << 48  # above any thread's own count; places stay below 2**52, where a float still tells k - 0.5 from k
_HISTORY = 1024  # the ranges a thread remembers; a node of an older one, placed only now, keeps its own number

_lock = threading.Lock()
_next = BASE
_local = threading.local()


class _Thread:
    __slots__ = ("mark", "starts", "ranges")

    def __init__(self) -> None:
        self.mark = 0  # this thread's nodes numbered below it have places (or are in ``ranges``)
        self.starts: List[int] = []
        self.ranges: List[Tuple[int, int, int]] = []  # (first own number, end, first place)


def _thread() -> _Thread:
    state = getattr(_local, "state", None)
    if state is None:
        state = _local.state = _Thread()
    return state


def seal() -> float:
    """The nodes this thread made since it last sealed come after every node placed so far;
    returns the position right after them (a send point made now sorts there)."""
    global _next
    state = _thread()
    now = torch._C._autograd._get_sequence_nr()
    with _lock:
        if now > state.mark:
            if len(state.ranges) >= _HISTORY:
                del state.starts[:_HISTORY // 2], state.ranges[:_HISTORY // 2]
            state.starts.append(state.mark)
            state.ranges.append((state.mark, now, _next))
            _next += now - state.mark
            state.mark = now
        return _next - 0.5


def place(nodes: Iterable) -> float:
    """Gives ``nodes``, and the nodes below them this thread made, their places; returns ``seal()``."""
    key = seal()
    state = _thread()
    starts, ranges = state.starts, state.ranges
    stack = [node for node in nodes if node is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        own = node._sequence_nr()
        if own >= BASE:
            continue  # placed already, or an AccumulateGrad
        i = bisect.bisect_right(starts, own) - 1
        if i < 0 or own >= ranges[i][1]:
            continue  # not made by this thread (or too long ago): its own thread places it
        lo, _, first = ranges[i]
        node._set_sequence_nr(first + own - lo)
        stack.extend(child for child, _ in node.next_functions if child is not None and child not in seen)
    return key


def place_tensors(value) -> None:
    """``place`` for the nodes of the tensors in ``value`` (a tensor, or lists, tuples and dicts of them)."""
    found = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.grad_fn is not None:
                found.append(item.grad_fn)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    if found:
        place(found)
