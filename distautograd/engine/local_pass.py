"""One worker's part of one backward pass: gradients arrive, complete nodes run once, recv gradients go out.

Sources deliver their gradient over time (the roots at once, send points when the worker the
tensor went to pushes it back). A node runs when it is complete, i.e. every source that reaches
it has delivered. Whatever became complete runs as one wave through torch's engine; where a node
still waits for another worker, or where the fixed order of a sum must be kept, the wave runs
node by node instead. Gradients that meet are summed in one fixed order, the order a local
backward would sum them in: the roots first, then producers latest-created first, a gradient
from another worker counting as made when its tensor was sent. So every result is reproducible,
and equal bit for bit to single-process autograd where the arithmetic is the same.

On the native path the compiled core plans the part and keeps this bookkeeping (native/csrc/local_pass.cpp,
the same algorithm step for step) wherever it can run every wave: leaves accumulating into the context,
no graph made, every recv node the core's (``start``). This class is the reference it is tested
against, and the path for a capture, ``create_graph`` and the Python recv node.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.autograd.graph import GradientEdge

from distautograd import native
from distautograd.engine import execution, slots
from distautograd.engine.graph import ROOTS, PassGraph
from distautograd.engine.nodes import LEAF_NODE, RECV_NODE, RECV_TYPES, is_leaf, recv_points
from distautograd.engine.slots import GradStore

ROOT_KEY = math.inf

# (gradients by recv point, whether they are this part's last work: nothing more runs here after)
Send = Callable[[Dict[int, Optional[torch.Tensor]], bool], None]
Finish = Callable[[Optional[BaseException]], None]


LocalPart = Union["LocalPass", Any]  # LocalPass, or native.core.LocalPass (the same methods and attributes)


def start(sources: Dict[int, Sequence[GradientEdge]], keys: Dict[int, float], store: GradStore,
          **options) -> LocalPart:
    """The part of a pass whose gradient enters at ``sources`` (as PassGraph takes them), given what
    LocalPass takes besides: the core's, planned and made in one call, where it can run the part (the
    message path native, leaves accumulating, no graph made, every recv node the core's), else LocalPass
    over a PassGraph."""
    if native.path_on() and store.accumulates and not options.get("create_graph"):
        retain_graph = options.get("retain_graph", False)

        def run_node(node, entries):
            contributions = [(GradientEdge(node, slot), grad) for slot, grad in entries]
            return execution.run_node(node, contributions, store, retain_graph, False)

        local = native.core.LocalPass.plan(sources, keys, store.grads, slots.LOCK, options["send"], options["finish"],
                                           run_node, options.get("observe"), UnknownSource, retain_graph, LEAF_NODE,
                                           RECV_TYPES, RECV_NODE)
        if local is not None:
            return local
    return LocalPass(PassGraph(sources), keys, store, **options)


class LocalPass:
    def __init__(
        self,
        graph: PassGraph,
        keys: Dict[int, float],
        store: GradStore,
        *,
        send: Send,
        finish: Finish,
        retain_graph: bool = False,
        create_graph: bool = False,
        observe: Optional[Callable[[float, float, int, bool], None]] = None,
    ):
        """``keys``: for each send point source, where its gradient sorts among the others (see module);
        ``observe(start µs, end µs, nodes, whole)``: told of every wave (a trace), if given."""
        self.graph = graph
        self.keys = dict(keys)
        self.keys[ROOTS] = ROOT_KEY
        self.store = store
        self.retain_graph = retain_graph
        self.create_graph = create_graph
        self._send = send
        self._finish = finish
        self._observe = observe
        self._lock = threading.Lock()
        self._remaining = {node: bin(mask).count("1") for node, mask in graph.mask.items()}
        self._ready: set = set()
        # node -> slot -> [(sort key, gradient)]: what reached a node before it runs
        self._stash: Dict[object, Dict[int, List[Tuple[float, torch.Tensor]]]] = {}
        self._arrived: set = set()
        self._executed = 0
        self._draining = False
        self._closed = False
        self.leaves_reached = 0
        self.waves = 0
        if not len(graph):
            self._closed = True

    @property
    def done(self) -> bool:
        return self._executed == len(self.graph)

    @property
    def order(self) -> List:
        """The part's nodes in the order they run (the graph's)."""
        return self.graph.order

    @property
    def arrived(self) -> int:
        """How many sources have delivered."""
        return len(self._arrived)

    def start_if_empty(self) -> None:
        """A part with nothing to run is done at once."""
        if not len(self.graph):
            self._finish(None)

    # ------------------------------------------------------------------ arrivals

    def arrive(self, key: int, grads: Sequence[Optional[torch.Tensor]]) -> None:
        """Source ``key`` delivers (one gradient per edge of the source; None where none flowed).
        Runs whatever became complete, in this thread, unless another thread is already at it."""
        graph = self.graph
        if key not in self.keys or key not in graph.sources:
            raise UnknownSource(f"gradient arrived for send point {key}, which takes no part in this pass here")
        with self._lock:
            if self._closed or key in self._arrived:
                return  # a retried push: it already counted
            self._arrived.add(key)
            sort_key = self.keys[key]
            for edge, grad in zip(graph.sources[key], grads):
                if grad is not None and edge.node is not None:
                    self._add_locked(edge.node, edge.output_nr, sort_key, grad)
            for node in graph.reach[key]:
                self._remaining[node] -= 1
                if not self._remaining[node]:
                    self._ready.add(node)
            if self._draining:
                return
            self._draining = True
        self._drain()

    def close(self) -> None:
        """Stops the pass here (it was aborted): nothing more runs, nothing more is sent."""
        with self._lock:
            self._closed = True
            self._stash.clear()  # nothing runs any more: let its gradients go now

    # ------------------------------------------------------------------ running

    def _drain(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed or not self._ready:
                        self._draining = False
                        finished = not self._closed and self.done
                        if finished:
                            self._closed = True
                        break
                    index = self.graph.index
                    wave = sorted(self._ready, key=index.__getitem__)
                    self._ready.clear()
                    whole = self._runs_whole_locked(wave)
                    roots = self._take_locked(wave) if whole else []
                    last = self._executed + len(wave) == len(self.graph)
                began = time.time_ns() / 1000.0 if self._observe is not None else 0.0
                if whole:
                    self._run_whole(wave, roots, last)
                else:
                    self._run_node_by_node(wave)
                if self._observe is not None:
                    self._observe(began, time.time_ns() / 1000.0, len(wave), whole)
                with self._lock:
                    self._executed += len(wave)
                    self.waves += 1
        except BaseException as exc:
            with self._lock:
                already = self._closed
                self._closed = True
                self._draining = False
            if not already:
                self._finish(exc)
            return
        if finished:
            self._finish(None)

    def _runs_whole_locked(self, wave: List) -> bool:
        """True when one engine call can run the wave: no node below it still waits, and where
        gradients from earlier (or from other workers) meet gradients made in this wave, the
        engine's order of summing them (those first) is the fixed order."""
        members = set(wave)
        children = self.graph.children
        for node in wave:
            for child, _, _ in children[node]:
                if child not in members:
                    return False
        parents = self.graph.parents
        for node in wave:
            inside: Dict[int, List[int]] = {}
            for parent, _, slot in parents[node]:
                if parent in members:
                    inside.setdefault(slot, []).append(parent._sequence_nr())
            stashed = self._stash.get(node, {})
            for slot, seqs in inside.items():
                early = stashed.get(slot)
                if early and len(early) + len(seqs) >= 3 and min(k for k, _ in early) < max(seqs):
                    return False
        return True

    def _add_locked(self, node, slot: int, key: float, grad: torch.Tensor) -> None:
        self._stash.setdefault(node, {}).setdefault(slot, []).append((key, grad))

    def _take_locked(self, wave: List) -> List[Tuple[GradientEdge, torch.Tensor]]:
        """Everything that reached these nodes before they run, in the order to sum it."""
        roots = []
        for node in wave:
            for slot, entries in sorted(self._stash.pop(node, {}).items()):
                roots.extend((GradientEdge(node, slot), grad) for _, grad in _in_order(entries))
        return roots

    def _run_whole(self, wave: List, roots, last: bool) -> None:
        leaves = [node for node in wave if is_leaf(node)]
        recvs = [node for node in wave if recv_points(node) is not None]
        got = execution.run_wave(roots, leaves, recvs, self.store, self.retain_graph, self.create_graph)
        self.leaves_reached += len(leaves) if roots else 0
        if got:
            self._send(got, last)

    def _run_node_by_node(self, wave: List) -> None:
        children = self.graph.children
        for node in wave:
            with self._lock:
                if self._closed:
                    return
                contributions = self._take_locked([node])
            points = recv_points(node)
            if not contributions:
                if points is not None:
                    self._send({point.message_id: None for point in points}, False)
                continue
            produced, got = execution.run_node(node, contributions, self.store, self.retain_graph, self.create_graph)
            if is_leaf(node):
                self.leaves_reached += 1
            if got:
                self._send(got, False)
            if produced:
                key = node._sequence_nr()
                with self._lock:
                    for child, slot, i in children[node]:
                        grad = produced[i] if i < len(produced) else None
                        if grad is not None:
                            self._add_locked(child, slot, key, grad)


class UnknownSource(ValueError):
    """A source delivered that this worker's part of the pass does not have (a peer's mistake)."""


def _in_order(entries: List[Tuple[float, torch.Tensor]]) -> List[Tuple[float, torch.Tensor]]:
    """Latest first, as a local backward sums them; the sort is stable, so ties keep arrival order."""
    return sorted(entries, key=lambda entry: entry[0], reverse=True)
