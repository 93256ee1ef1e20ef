"""Leaves accumulate into a context, not into ``.grad``: their slot holds the context's gradient while torch's engine runs.

torch's AccumulateGrad is what runs a leaf's hooks (tensor hooks, node hooks, post-accumulate
hooks, and DistributedDataParallel's reducer) and decides whether a gradient can be kept as it
is or must be copied. To get exactly that, a pass lets AccumulateGrad run for real, with each
leaf's ``.grad`` swapped for the context's gradient for the duration of the engine call, and
swapped back after. One lock serialises those windows in this process (and the local optimizer
steps that use the same slots), so concurrent passes never see each other's gradients.
On the native path the compiled core swaps the slots itself, inside its one call of the engine for a
wave (native/csrc/leaf_slots.cpp, wave_run.cpp), under the same lock; ``swapped`` here is the
reference it is tested against and the Python path's.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Dict, Iterator, Sequence

import torch

LOCK = threading.RLock()


class GradStore:
    """A context's accumulated gradients on this worker: leaf tensor -> gradient."""

    accumulates = True

    def __init__(self) -> None:
        self.grads: Dict[torch.Tensor, torch.Tensor] = {}

    def snapshot(self) -> Dict[torch.Tensor, torch.Tensor]:
        with LOCK:
            return dict(self.grads)

    def __len__(self) -> int:
        return len(self.grads)


class Captured:
    """Leaf gradients a pass hands back instead of accumulating them (dist_autograd.grad), by
    the leaf's AccumulateGrad node; AccumulateGrad does not run, as in torch.autograd.grad."""

    accumulates = False

    def __init__(self) -> None:
        self.grads: Dict[object, torch.Tensor] = {}

    def take(self, leaves: Sequence, grads: Sequence) -> None:
        with LOCK:
            for leaf, grad in zip(leaves, grads):
                if grad is not None:
                    self.grads[leaf] = grad


@contextlib.contextmanager
def swapped(leaves: Sequence, store: GradStore) -> Iterator[None]:
    """``.grad`` of each leaf (AccumulateGrad node) holds the store's gradient inside the block.

    AccumulateGrad keeps a gradient as it is when nothing else holds it. One gradient reaching two
    leaves is held by both until the first accumulates, so the first copies it, but the second
    would keep the very buffer a backward function returned. torch's distributed engine holds every
    gradient until all are accumulated, so each leaf gets a copy; here the second leaf is handed a
    copy (by a pre-hook that knows the tensors earlier leaves got, without holding them)."""
    if not leaves:
        yield
        return
    variables = [leaf.variable for leaf in leaves]
    seen: Dict[int, weakref.ref] = {}

    def own_copy(grad_outputs):
        grad = grad_outputs[0]
        if grad is None:
            return None
        earlier = seen.get(id(grad))
        if earlier is not None and earlier() is grad:
            return (grad.clone(),)
        seen[id(grad)] = weakref.ref(grad)
        return None

    with LOCK:
        saved = [v.grad for v in variables]
        handles = [leaf.register_prehook(own_copy) for leaf in leaves] if len(leaves) > 1 else []
        try:
            for v in variables:
                _set(v, store.grads.get(v))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for v, before in zip(variables, saved):
                after = v.grad
                if after is not None:
                    store.grads[v] = after
                _set(v, before)


def _set(variable: torch.Tensor, grad) -> None:
    # Direct assignment checks shape and dtype against the variable; the store only ever holds what
    # AccumulateGrad made for this very variable, so skip nothing and let torch check.
    variable.grad = grad
