"""torch.distributed.autograd's public surface: contexts, an exact distributed backward, per-context gradients."""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Union

import torch

from distautograd.autograd.checking import gradcheck, gradgradcheck
from distautograd.runtime import anomaly, current, inspection
from distautograd.runtime.contexts import Context


class context:
    """A distributed autograd context: ``with context() as context_id:``.

    Every rpc made inside it records the send and recv points of tensors that require grad, so
    ``backward(context_id, [loss])`` can run back across workers. Leaving the block releases the
    context on every worker that took part. One context per thread at a time.

    ``detect_anomaly=True`` (or calls made under ``torch.autograd.detect_anomaly()``): every
    worker keeps the forward stack of the nodes it makes for the context, and a backward function
    that returns NaN anywhere (or Inf, with ``check_inf=True``) stops the pass with an error that
    names the worker, the node, torch's formula and that stack. Off, it costs nothing.

    ``graph=True``: every worker records what each pass does to each node of the context (ran
    how often, the shapes it produced), for ``graph(context_id)``.

    ``trace=True`` (or a file name): every worker records the context's calls, backward waves and
    messages; ``trace(context_id)`` returns them as one Chrome trace (chrome://tracing, Perfetto),
    and a file name gets it written there when the block ends.
    """

    def __init__(self, detect_anomaly: bool = False, check_inf: bool = False, graph: bool = False,
                 trace: Union[bool, str] = False):
        self._anomaly = (anomaly.NAN | (anomaly.INF if check_inf else 0)) if detect_anomaly else 0
        self._inspect = (inspection.GRAPH if graph else 0) | (inspection.TRACE if trace else 0)
        self._trace_file = trace if isinstance(trace, str) else None
        self._mode = None

    def __enter__(self) -> int:
        self._ctx = current.get().contexts.create()
        self._ctx.anomaly = self._anomaly
        self._ctx.inspect = self._inspect
        if self._anomaly and not torch.is_anomaly_enabled():
            self._mode = torch.autograd.set_detect_anomaly(True)  # this thread's forward keeps its stacks too
        return self._ctx.id

    def __exit__(self, *exc) -> None:
        path, self._trace_file = self._trace_file, None
        try:
            if path is not None:  # before the context goes: the other workers drop its events with it
                with open(path, "w") as f:
                    json.dump(inspection.gather_trace(self._ctx.id), f)
        finally:
            if self._mode is not None:
                self._mode.__exit__(None, None, None)
                self._mode = None
            current.get().contexts.exit(self._ctx)


def backward(context_id: int, roots: List[torch.Tensor], retain_graph: Optional[bool] = None,
             create_graph: bool = False) -> None:
    """Computes the gradients of ``roots`` (scalars) on every worker, each autograd node once.

    Leaf gradients accumulate in the context on the worker that holds the leaf; read them there
    with ``get_gradients(context_id)``. ``.grad`` is never touched. Raises RuntimeError, naming
    the worker, if any backward function fails anywhere or a worker dies during the pass.
    ``create_graph=True`` makes the gradients differentiable (beyond torch): a second backward
    through them crosses workers as the first did. ``retain_graph`` defaults to ``create_graph``,
    as in ``torch.autograd.backward``.

    Example::

        >>> with dist_autograd.context() as context_id:
        ...     loss = rpc.rpc_sync("worker1", torch.add, args=(t1, t2)).sum()
        ...     dist_autograd.backward(context_id, [loss])
    """
    if not isinstance(context_id, int) or isinstance(context_id, bool):
        raise TypeError(f"backward(): incompatible function arguments: context_id must be an int, "
                        f"got {type(context_id).__name__}")
    if retain_graph is None:
        retain_graph = create_graph
    agent = current.get()
    agent.backward.backward(agent.contexts.get(context_id), roots, retain_graph, create_graph)


def grad(context_id: int, outputs: Union[torch.Tensor, Sequence[torch.Tensor]],
         inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
         grad_outputs: Optional[Union[torch.Tensor, Sequence[Optional[torch.Tensor]]]] = None,
         retain_graph: Optional[bool] = None, create_graph: bool = False, allow_unused: bool = False) -> tuple:
    """As ``torch.autograd.grad``, across workers: the gradients of ``outputs`` with respect to
    ``inputs`` (leaf tensors on this worker), returned and accumulated nowhere. ``outputs`` reach
    back through the context's calls as ``backward`` does; ``create_graph=True`` makes the result
    differentiable (a gradient penalty's ``‖∂D/∂x‖``).
    """
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor) or not x.requires_grad or x.grad_fn is not None:
            raise RuntimeError(f"distautograd.autograd.grad: input {i} must be a leaf tensor on this worker that "
                               "requires grad (for an intermediate value, differentiate with respect to a leaf "
                               "made from it: x = y.detach().requires_grad_())")
    if grad_outputs is not None:
        grad_outputs = [grad_outputs] if isinstance(grad_outputs, torch.Tensor) else list(grad_outputs)
        if len(grad_outputs) != len(outputs):
            raise RuntimeError(f"grad can be implicitly created only for scalar outputs; got {len(grad_outputs)} "
                               f"grad_outputs for {len(outputs)} outputs")
    if retain_graph is None:
        retain_graph = create_graph
    agent = current.get()
    captured = agent.backward.backward(agent.contexts.get(context_id), outputs, retain_graph, create_graph,
                                       grads=grad_outputs, capture=True)
    found = [captured.grads.get(torch.autograd.graph.get_gradient_edge(x).node) for x in inputs]
    for i, g in enumerate(found):
        if g is None and not allow_unused:
            raise RuntimeError(f"One of the differentiated Tensors appears to not have been used in the graph "
                               f"(input {i}). Set allow_unused=True if this is the desired behavior.")
    return tuple(found)


def graph(context_id: int, roots: Sequence[torch.Tensor] = ()) -> dict:
    """The context's whole backward graph, across every worker that holds part of it, as plain data
    (see views.graphdata): each node's worker, name, torch's formula per input, what it saved, for
    leaves the parameter; each edge, and for tensors that crossed, the message id, the two workers
    and the bytes. Call it on the worker that owns the context, after the forward; ``roots`` (the
    loss) adds the part above the recv points here. With ``context(graph=True)``, nodes also say
    what the passes did to them.
    """
    return inspection.gather(context_id, roots)


def trace(context_id: int) -> dict:
    """The context's trace so far, from every worker that took part (``context(trace=True)``), as a
    Chrome trace-event dict: ``json.dump`` it and open it in Perfetto or chrome://tracing."""
    return inspection.gather_trace(context_id)


def get_gradients(context_id: int) -> Dict[torch.Tensor, torch.Tensor]:
    """This worker's accumulated gradients in the context: {leaf tensor: gradient}."""
    return current.get().contexts.get(context_id).gradients()


def _is_valid_context(context_id: int) -> None:
    current.get().contexts.get(context_id)


def _current_context():
    ctx = current.get().contexts.current()
    if ctx is None:
        raise RuntimeError("Current thread doesn't have a valid autograd context. Please wrap your code using: "
                           "`with torch.distributed.autograd.context() as context_id` to generate a valid context")
    return ctx


def _retrieve_context(context_id: int):
    """The context object (``_context_id()``, ``_send_functions()``, ...), as torch's."""
    return current.get().contexts.get(context_id)


def _new_context():
    """Makes a context this thread works in, without a ``with`` block (torch's private API)."""
    return current.get().contexts.create()


def _release_context(context_id: int) -> None:
    """Releases a context made with _new_context, here and on every worker that took part."""
    contexts = current.get().contexts
    contexts.exit(contexts.get(context_id))


def _get_max_id() -> int:
    """The largest context id this worker can make (ids carry its rank in their high 16 bits)."""
    return current.get().mint.max_id()


def _get_debug_info() -> Dict[str, int]:
    """Live contexts and backward passes in flight on this worker (both return to 0 after cleanup)."""
    return current.get().autograd_debug_info()


def is_available() -> bool:
    return True


DistAutogradContext = Context  # the type torch's private API hands out


__all__ = ["DistAutogradContext", "backward", "context", "get_gradients", "grad", "gradcheck", "gradgradcheck",
           "graph", "is_available", "trace"]
