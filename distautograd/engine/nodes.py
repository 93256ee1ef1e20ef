"""The two kinds of node where gradient leaves a worker's graph: leaves (AccumulateGrad) and recv points.

A recv point is the node of a tensor that arrived from another worker inside a context. Its
backward records the gradient it gets (after the tensor's hooks, as torch's RecvRpcBackward
does) for the pass to send back; run by plain local autograd, it explains what to do instead.
Each recv point hangs off an anchor of its own: capturing that anchor is how a pass asks torch
to run exactly the recv points that are complete, and no other.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional

import torch
from torch.autograd.graph import GradientEdge, get_gradient_edge

_recording = threading.local()

LOCAL_BACKWARD_ERROR = (
    "this graph contains a tensor received inside a distributed autograd context; run its backward "
    "with distautograd.autograd.backward(context_id, roots), not a local backward()"
)


class RecvRpc(torch.autograd.Function):
    """The recv point of a tensor that arrived inside a context; its node shows as RecvRpcBackward."""

    @staticmethod
    def forward(ctx, anchor, holder):
        tensor, point = holder
        ctx.point = point
        ctx.set_materialize_grads(False)  # no gradient stays "no gradient" on its way back
        return tensor

    @staticmethod
    def backward(ctx, grad):
        sink: Optional[Dict[int, Any]] = getattr(_recording, "sink", None)
        if sink is None:
            raise RuntimeError(LOCAL_BACKWARD_ERROR)
        sink[ctx.point.message_id] = grad
        return None, None


RECV_NODE = RecvRpc._backward_cls
LEAF_NODE = type(get_gradient_edge(torch.empty(0, requires_grad=True)).node)


def is_leaf(node) -> bool:
    return type(node) is LEAF_NODE


def recv_point(node) -> Optional[Any]:
    """The recv point ``node`` is, or None."""
    return node.point if type(node) is RECV_NODE else None


def make_recv(tensor: torch.Tensor, point) -> tuple:
    """``tensor`` as the output of a new recv point; returns it and the edge of its anchor."""
    anchor = torch.empty(0, requires_grad=True)
    out = RecvRpc.apply(anchor, [tensor, point])
    return out, get_gradient_edge(anchor)


class recording:
    """Collects, in this thread, the gradients recv points get while torch's engine runs them."""

    def __enter__(self) -> Dict[int, Any]:
        self.previous = getattr(_recording, "sink", None)
        _recording.sink = {}
        return _recording.sink

    def __exit__(self, *exc) -> None:
        _recording.sink = self.previous


def edge(node, slot: int = 0) -> GradientEdge:
    return GradientEdge(node, slot)
