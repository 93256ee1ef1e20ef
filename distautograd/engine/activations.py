"""Which send points a gradient would set off, known when a tensor is sent: no round before a pass.

An autograd graph only grows at its roots, so what lies below a node never changes. Gradient
reaching a node flows down to the recv points below it; each sends its gradient back to the
send point of the same message id on the worker that sent the tensor, and from there on to that
worker's recv points, and so on. ``Activations.of(node, output)`` is that set of send points
(message ids, on any worker), computed once per node and remembered (a recv node's outputs are
recv points each with a set of its own). It travels with every tensor sent,
so the worker that calls backward knows, from its own graph alone, every send point the pass
will reach. Where the set did not travel (it was too big, or came from a worker that could not
say), it is *unknown* for that recv point and the caller asks the sender (``unknown`` below).
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, FrozenSet, Iterable, List, NamedTuple, Set, Tuple

from distautograd.engine.nodes import is_leaf, recv_points

_EMPTY: FrozenSet[int] = frozenset()


class Activation(NamedTuple):
    """The send points gradient at a node sets off; ``unknown``: send points whose own further
    activations this worker does not know (ask the worker that holds each)."""

    ids: FrozenSet[int]
    unknown: FrozenSet[int]


NOTHING = Activation(_EMPTY, _EMPTY)


def of_recv(message_id: int, sent) -> Activation:
    """A recv point's activation: its own send point, plus what the sender said that one sets off
    (``sent`` None when the sender did not say)."""
    if sent is None:
        return Activation(frozenset((message_id,)), frozenset((message_id,)))
    return Activation(frozenset((message_id,)) | frozenset(sent), _EMPTY)


class Activations:
    """The memo of one context: node -> Activation."""

    def __init__(self) -> None:
        self._memo: Dict[object, Activation] = {}
        self._lock = threading.Lock()

    def of(self, node, output: int = 0) -> Activation:
        """The activation of gradient entering ``node`` at ``output`` (the edge a tensor names)."""
        if node is None:
            return NOTHING
        points = recv_points(node)
        if points is not None:
            return points[output].activation
        memo = self._memo
        found = memo.get(node)
        if found is not None:
            return found
        with self._lock:
            stack = [(node, False)]
            while stack:
                current, expanded = stack.pop()
                if current in memo:
                    continue
                if expanded:
                    memo[current] = _union(_at(memo, child, output) for child, output in current.next_functions
                                           if child is not None)
                    continue
                if is_leaf(current) or recv_points(current) is not None:
                    memo[current] = NOTHING
                    continue
                stack.append((current, True))
                stack.extend((child, False) for child, _ in current.next_functions
                             if child is not None and child not in memo)
            return memo[node]

    def clear(self) -> None:
        with self._lock:
            self._memo.clear()


def _at(memo: Dict[object, Activation], child, output: int) -> Activation:
    points = recv_points(child)
    return points[output].activation if points is not None else memo[child]


def _union(parts) -> Activation:
    ids, unknown = _EMPTY, _EMPTY
    for part in parts:
        # Most nodes pass on one child's set unchanged: share it rather than copy it.
        ids = part.ids if not ids else ids if not part.ids or part.ids <= ids else ids | part.ids
        unknown = part.unknown if not unknown else unknown if not part.unknown else unknown | part.unknown
    return Activation(ids, unknown) if ids or unknown else NOTHING


def union(parts) -> Activation:
    """The activation of several nodes together (the roots of a pass)."""
    return _union(parts)


def reached(found: Activation, ask: Callable[[List[int]], Iterable[Tuple[Iterable[int], Iterable[int]]]],
            most_rounds: int = 4096) -> Set[int]:
    """Every send point a pass reaches: those ``found`` names and, where it left some unknown, what the
    workers holding those say each sets off, round after round until nothing is unknown. ``ask(ids)``
    answers, for send points not asked before, (what each sets off, which of those are unknown to its
    holder). Each id is asked once, so the rounds end; ``most_rounds`` stops a peer that keeps naming
    new unknown ids."""
    active, unknown = set(found.ids), set(found.unknown)
    asked: Set[int] = set()
    for _ in range(most_rounds):
        unknown -= asked
        if not unknown:
            return active
        asked |= unknown
        more: Set[int] = set()
        for activates, still_unknown in ask(sorted(unknown)):
            active.update(activates)
            more.update(still_unknown)
        unknown = more
    raise RuntimeError(f"send points were still unknown after {most_rounds} rounds of asking their holders")
