"""The two kinds of node where gradient leaves a worker's graph: leaves (AccumulateGrad) and recv points.

A recv point is a tensor that arrived from another worker inside a context. As in torch, the
tensors that requiring grad arrived in one message share one RecvRpcBackward node, output i
being tensor i's recv point. Its backward records the gradient each got (after the tensors'
hooks) for the pass to send back; run by plain local autograd, it explains what to do instead.
On the native path the node is C++ (native/csrc/recv_node.cpp: torch's engine runs it without
the GIL); on the Python path it is the autograd.Function below. A recording collects from both.
Each such node hangs off an anchor of its own: capturing that anchor is how a pass asks torch to
run exactly the recv nodes that are complete, and no other. No recv node can wait on gradient
that only its own pushes set off: whatever a message's tensors were made from was made before
it was sent, so gradient pushed for one of them never comes back to another.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.autograd.graph import GradientEdge, get_gradient_edge

from distautograd import native
from distautograd.engine import order

_recording = threading.local()

LOCAL_BACKWARD_ERROR = (
    "this graph contains a tensor received inside a distributed autograd context; run its backward "
    "with distautograd.autograd.backward(context_id, roots), not a local backward()"
)


class RecvRpc(torch.autograd.Function):
    """The recv points of the tensors of one message; its node is named as torch names its own."""

    @staticmethod
    def forward(ctx, anchor, holder):
        tensors, points = holder
        ctx.points = points
        ctx.set_materialize_grads(False)  # no gradient stays "no gradient" on its way back
        # A decoded tensor is often a view of the bytes it arrived in; as an output of a custom Function
        # autograd would forbid modifying it in place. detach() shares the memory without the view.
        return tuple(t.detach() if t._is_view() else t for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        sink: Optional[Dict[int, Any]] = getattr(_recording, "sink", None)
        if sink is None:
            raise RuntimeError(LOCAL_BACKWARD_ERROR)
        for point, grad in zip(ctx.points, grads):
            sink[point.message_id] = grad
        return None, None


RECV_NODE = RecvRpc._backward_cls
RECV_NODE.__name__ = RECV_NODE.__qualname__ = RECV_NAME = "torch::distributed::autograd::RecvRpcBackward"
NATIVE_RECV_NODE = native.core.RecvNode if native.core is not None else None
RECV_TYPES = (RECV_NODE,) if NATIVE_RECV_NODE is None else (RECV_NODE, NATIVE_RECV_NODE)
SEND_NAME = "torch::distributed::autograd::SendRpcBackward"
LEAF_NODE = type(get_gradient_edge(torch.empty(0, requires_grad=True)).node)
if native.core is not None:
    native.core.set_local_backward_error(LOCAL_BACKWARD_ERROR)


def is_leaf(node) -> bool:
    return type(node) is LEAF_NODE


def recv_points(node) -> Optional[List[Any]]:
    """The recv points of a RecvRpcBackward node (one per output), or None for any other node."""
    return node.points if type(node) in RECV_TYPES else None


def make_recv(tensors: Sequence[torch.Tensor], points: Sequence) -> tuple:
    """``tensors`` as the outputs of one new RecvRpcBackward node, output i being ``points[i]``;
    returns them and the edge of the node's anchor."""
    if native.path_on():
        outs, accumulate = native.core.make_recv_node(list(tensors), [p.message_id for p in points], list(points))
        anchor = GradientEdge(accumulate, 0)
    else:
        leaf = torch.empty(0, requires_grad=True)
        outs = RecvRpc.apply(leaf, [list(tensors), list(points)])
        outs = outs if isinstance(outs, tuple) else (outs,)
        anchor = get_gradient_edge(leaf)
    order.place([outs[0].grad_fn])  # made on this thread, which may not be the one that uses it
    return outs, anchor


def weak_ref(node) -> Callable[[], Any]:
    """A weak reference to a recv node: weakref's for the Python one, the core's for the C++ one."""
    return weakref.ref(node) if type(node) is RECV_NODE else native.core.WeakNode(node)


def gradient_edge(tensor: torch.Tensor) -> GradientEdge:
    """Where gradient for ``tensor`` enters its graph: torch's get_gradient_edge, which views the
    tensor and so cannot take a sparse one. For those, a product with 1 gives a node whose first
    edge is the tensor's own, and that node keeps the graph alive (as the view does in torch's)."""
    if tensor.layout == torch.strided:
        return get_gradient_edge(tensor)
    with torch.enable_grad():
        through = tensor.mul(1).grad_fn
    node, slot = through.next_functions[0]
    return GradientEdge(node, slot, ownership_token=through)


class recording:
    """Collects, in this thread, the gradients recv points get while torch's engine runs them
    (the C++ ones' are added when the block ends)."""

    def __enter__(self) -> Dict[int, Any]:
        self.previous = getattr(_recording, "sink", None)
        self.sink = _recording.sink = {}
        self.native = native.core.Recording() if native.core is not None else None
        if self.native is not None:
            self.native.open()
        return self.sink

    def __exit__(self, *exc) -> None:
        if self.native is not None:
            self.sink.update(self.native.close())
        _recording.sink = self.previous
