"""Calls into torch's engine, the two ways a pass uses it.

``run_wave``: everything that became complete at once, in one call of torch's engine (as
``torch.autograd.backward`` makes it; on the native path one call of the core, native/csrc/wave_run.cpp).
The inputs are the leaves and the anchors of the recv points among those nodes, so torch runs
exactly the nodes on the way to them, each with all its gradient: tensor hooks, node hooks,
AccumulateGrad and DistributedDataParallel's reducer behave as in a local backward.

``run_node``: one node alone, when a wave cannot run as a whole (a node it reaches still waits
for a gradient from another worker, or contributions must be summed in an order the engine would
not use); a leaf or a recv node runs as a wave of one. A node that is neither runs as
``torch.autograd.grad`` would run it towards its children; a post-hook, registered after the
user's own, records what it produced for each child and ends the engine call right there, so no
child runs and no child's tensor hooks see a gradient that is not yet whole.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.autograd.graph import GradientEdge, _engine_run_backward

from distautograd import native
from distautograd.engine import order, slots
from distautograd.engine.nodes import NATIVE_RECV_NODE, is_leaf, recording, recv_points

Contribution = Tuple[GradientEdge, torch.Tensor]


def run_wave(
    roots: Sequence[Contribution],
    leaves: Sequence,
    recvs: Sequence,
    store: slots.GradStore,
    retain_graph: bool,
    create_graph: bool,
) -> Dict[int, Optional[torch.Tensor]]:
    """Runs one wave; returns the gradient each of ``recvs`` got (None where none reached it).
    Leaves accumulate into ``store``, or, if it is a slots.Captured, hand their gradients to it."""
    sink: Dict[int, Optional[torch.Tensor]] = {}
    if roots and (leaves or recvs):
        edges, grads = [edge for edge, _ in roots], [grad for _, grad in roots]
        anchors = [recv_points(node)[0].anchor for node in recvs]
        if store.accumulates and not create_graph and _native(recvs):  # as the next branch, in one call of the core
            sink = native.core.run_wave(edges, grads, list(leaves), [anchor.node for anchor in anchors], store.grads,
                                        slots.LOCK, retain_graph)
        else:
            sink = _run_wave_in_python(edges, grads, leaves, anchors, store, retain_graph, create_graph)
    return {point.message_id: sink.get(point.message_id) for node in recvs for point in recv_points(node)}


def _run_wave_in_python(edges, grads, leaves, anchors, store: slots.GradStore, retain_graph: bool,
                        create_graph: bool) -> Dict[int, Optional[torch.Tensor]]:
    """run_wave's reference path (and its only one for a capture or a graph made): the gradient each recv point got."""
    inputs = [GradientEdge(leaf, 0) for leaf in leaves] + anchors
    if store.accumulates:
        with slots.swapped(leaves, store), recording() as sink:
            _run_engine(edges, grads, retain_graph, create_graph, inputs)
        got = [store.grads.get(leaf.variable) for leaf in leaves] if create_graph else ()
    else:
        with recording() as sink:
            got = _run_engine(edges, grads, retain_graph, create_graph, inputs, accumulate=False)
        store.take(leaves, got[:len(leaves)])
    if create_graph:
        order.place_tensors([got, sink])  # the graph this call made, placed on the thread that made it
    return sink


def run_node(
    node,
    contributions: Sequence[Contribution],
    store: slots.GradStore,
    retain_graph: bool,
    create_graph: bool,
) -> Tuple[Optional[tuple], Dict[int, Optional[torch.Tensor]]]:
    """Runs ``node`` alone with ``contributions`` (its gradient, in the order to sum it).

    Returns (what it produced for each of its next edges, or None for a leaf or recv point;
    the gradient a recv point got)."""
    points = recv_points(node)
    if points is not None:
        return None, run_wave(contributions, [], [node], store, retain_graph, create_graph)
    if is_leaf(node):
        return None, run_wave(contributions, [node], [], store, retain_graph, create_graph)
    children = list(dict.fromkeys((child, slot) for child, slot in node.next_functions if child is not None))
    if not children:
        return (), {}
    produced: List[tuple] = []

    def record_and_stop(grad_inputs, grad_outputs):
        produced.append(grad_inputs)  # after the node's own post-hooks: it is registered last
        raise _Stop()

    handle = node.register_hook(record_and_stop)
    try:
        _run_engine([edge for edge, _ in contributions], [grad for _, grad in contributions], retain_graph,
                    create_graph, [GradientEdge(child, slot) for child, slot in children], accumulate=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if create_graph and produced:
        order.place_tensors(produced[0])  # its children may run on another thread
    return (produced[0] if produced else ()), {}


def _native(recvs: Sequence) -> bool:
    """The compiled core can run the wave: the message path is native and every recv node is the core's."""
    return native.path_on() and all(type(node) is NATIVE_RECV_NODE for node in recvs)


def _run_engine(roots: Sequence, grads: Sequence[torch.Tensor], retain_graph: bool, create_graph: bool,
                inputs: Sequence, accumulate: bool = True) -> tuple:
    """torch's engine, from ``roots`` (edges) with ``grads`` to ``inputs``: what
    ``torch.autograd.backward`` (accumulate) or ``torch.autograd.grad`` do after checking their
    arguments in Python. Every root here has a gradient of its own shape already (the engine still
    checks each against its node, so a wrong one from a peer fails the pass with torch's message),
    and that checking cost more than a small node's arithmetic."""
    return _engine_run_backward(tuple(roots), tuple(grads), retain_graph, create_graph, tuple(inputs),
                                allow_unreachable=True, accumulate_grad=accumulate)


class _Stop(Exception):
    """Raised by the post-hook of the node being run: the engine call ends before any child runs
    or is captured (a capture would call the child's tensor hooks before its gradient is whole)."""
