"""Running one segment of a backward pass through torch's own engine, so that each node in it runs once.

A segment whose frontier is "flat" (no node on it lies below another) runs as one engine call
from its boundary, capturing the gradients at its frontier: the engine runs exactly the
segment's nodes. Otherwise one call would also run a frontier node that lies on the way to
another, and that node belongs to another segment; then the segment runs one node at a time.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch.autograd.graph import GradientEdge

from distautograd.autograd.graph import Segment, is_leaf_node

Grads = Dict[int, Optional[torch.Tensor]]


def run(segment: Segment, grads: Grads, retain_graph: bool) -> Dict[object, Grads]:
    """Runs ``segment`` from its boundary's gradients; returns the gradients for each frontier node."""
    present = {slot: g for slot, g in grads.items() if g is not None}
    if not present:
        return {}
    if segment.flat:
        inputs = [(child, slot) for child, slots in segment.frontier.items() for slot in sorted(slots)]
        out: Dict[object, Grads] = {}
        for (child, slot), grad in zip(inputs, _engine(segment.boundary, present, inputs, retain_graph)):
            out.setdefault(child, {})[slot] = grad
        return out
    return _node_by_node(segment, present, retain_graph)


def _node_by_node(segment: Segment, present: Grads, retain_graph: bool) -> Dict[object, Grads]:
    members = set(segment.nodes)
    inside: Dict[object, Grads] = {segment.boundary: present}
    out: Dict[object, Grads] = {}
    for node in segment.nodes:
        grads = inside.pop(node, None)
        if not grads:
            continue
        for (child, slot), grad in zip(node.next_functions, _run_one_node(node, grads, retain_graph)):
            if child is not None and grad is not None:
                add((inside if child in members else out).setdefault(child, {}), slot, grad)
    return out


def total(parts: list) -> torch.Tensor:
    """Sums (order, gradient) pairs in descending order, left to right, as torch's input buffers do."""
    if len(parts) > 1:
        parts.sort(key=lambda part: part[0], reverse=True)
    total = parts[0][1]
    owned = False
    for _, grad in parts[1:]:
        if owned and total.layout == torch.strided:
            total.add_(grad)  # a tensor of our own: adding into it spares a fresh allocation per part
        elif total.layout != torch.strided and grad.layout == torch.strided:
            total, owned = grad + total, True  # torch adds sparse to dense only this way round (exact either way)
        else:
            total, owned = total + grad, True
    return total


def add(buffer: Grads, slot: int, grad: Optional[torch.Tensor]) -> None:
    if grad is None:
        return
    previous = buffer.get(slot)
    buffer[slot] = grad if previous is None else previous + grad


class _Stop(Exception):
    """Raised by a pre-hook to end an engine call before a node below the one being run."""


def _stop(grad_outputs):
    raise _Stop()


def _run_one_node(node, grads: Grads, retain_graph: bool) -> tuple:
    """Runs ``node`` alone through torch's engine (so dtype checks, hooks and freeing still apply);
    returns the gradient for each of its next edges.

    Every edge out of the node is made an input, so the engine computes them all; a post-hook
    records them; a pre-hook on each child that could run next ends the call right there.
    """
    captured: list = []
    edges = list(dict.fromkeys((c, s) for c, s in node.next_functions if c is not None))
    handles = [node.register_hook(lambda grad_inputs, grad_outputs: captured.append(grad_inputs))]
    handles += [c.register_prehook(_stop) for c in {c for c, _ in edges} if not is_leaf_node(c)]
    try:
        _engine(node, grads, edges, retain_graph)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured[0]


def _engine(node, grads: Grads, inputs, retain_graph: bool):
    """One call into torch's engine: from ``node``'s slots, capturing at ``inputs``."""
    return torch.autograd.grad(
        [GradientEdge(node, slot) for slot in grads],
        [GradientEdge(child, slot) for child, slot in inputs],
        grad_outputs=list(grads.values()),
        retain_graph=retain_graph,
        allow_unused=True,
    )


