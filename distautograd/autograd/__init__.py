"""torch.distributed.autograd's public surface: contexts, an exact distributed backward, per-context gradients."""

from __future__ import annotations

from typing import Dict, List

import torch



def current_agent():
    # imported here: the runtime imports this package's modules, so this package must not import it first
    from distautograd.runtime.agent import current_agent as agent

    return agent()


class context:
    """A distributed autograd context: ``with context() as context_id:``.

    Every rpc made inside it records the send and recv points of tensors that require grad, so
    ``backward(context_id, [loss])`` can run back across workers. Leaving the block releases the
    context on every worker that took part. One context per thread at a time.
    """

    def __enter__(self) -> int:
        self._ctx = current_agent().contexts.create()
        return self._ctx.id

    def __exit__(self, *exc) -> None:
        current_agent().contexts.exit(self._ctx)


def backward(context_id: int, roots: List[torch.Tensor], retain_graph: bool = False) -> None:
    """Computes the gradients of ``roots`` (scalars) on every worker, each autograd node once.

    Leaf gradients accumulate in the context on the worker that holds the leaf; read them there
    with ``get_gradients(context_id)``. ``.grad`` is never touched. Raises, naming the worker, if
    any backward function fails anywhere or a worker dies during the pass.

    Example::

        >>> with dist_autograd.context() as context_id:
        ...     loss = rpc.rpc_sync("worker1", torch.add, args=(t1, t2)).sum()
        ...     dist_autograd.backward(context_id, [loss])
    """
    agent = current_agent()
    agent.engine.backward(agent.contexts.get(context_id), roots, retain_graph)


def get_gradients(context_id: int) -> Dict[torch.Tensor, torch.Tensor]:
    """This worker's accumulated gradients in the context: {leaf tensor: gradient}."""
    return current_agent().contexts.get(context_id).gradients()


def _is_valid_context(context_id: int) -> None:
    current_agent().contexts.get(context_id)


def _current_context():
    ctx = current_agent().contexts.current()
    if ctx is None:
        raise RuntimeError("this thread has no distributed autograd context")
    return ctx


def _get_debug_info() -> Dict[str, int]:
    """Live contexts and backward passes in flight on this worker (both return to 0 after cleanup)."""
    agent = current_agent()
    return {
        "num_autograd_contexts": agent.contexts.count(),
        "num_current_backward_passes": agent.engine.passes_in_flight(),
    }


__all__ = ["backward", "context", "get_gradients"]
