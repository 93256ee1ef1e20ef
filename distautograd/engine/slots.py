"""Leaves accumulate into a context, not into ``.grad``: their slot holds the context's gradient while torch's engine runs.

torch's AccumulateGrad is what runs a leaf's hooks (tensor hooks, node hooks, post-accumulate
hooks, and DistributedDataParallel's reducer) and decides whether a gradient can be kept as it
is or must be copied. To get exactly that, a pass lets AccumulateGrad run for real, with each
leaf's ``.grad`` swapped for the context's gradient for the duration of the engine call, and
swapped back after. One lock serialises those windows in this process (and the local optimizer
steps that use the same slots), so concurrent passes never see each other's gradients.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import torch

LOCK = threading.RLock()


class GradStore:
    """A context's accumulated gradients on this worker: leaf tensor -> gradient."""

    def __init__(self) -> None:
        self.grads: Dict[torch.Tensor, torch.Tensor] = {}

    def snapshot(self) -> Dict[torch.Tensor, torch.Tensor]:
        with LOCK:
            return dict(self.grads)

    def __len__(self) -> int:
        return len(self.grads)


@contextlib.contextmanager
def swapped(leaves: Sequence, store: GradStore) -> Iterator[None]:
    """``.grad`` of each leaf (AccumulateGrad node) holds the store's gradient inside the block."""
    if not leaves:
        yield
        return
    variables = [leaf.variable for leaf in leaves]
    with LOCK:
        saved = [v.grad for v in variables]
        try:
            for v in variables:
                _set(v, store.grads.get(v))
            yield
        finally:
            for v, before in zip(variables, saved):
                after = v.grad
                if after is not None:
                    store.grads[v] = after
                _set(v, before)


@contextlib.contextmanager
def muted(hook_dicts: Iterable[Optional[dict]]) -> Iterator[None]:
    """These tensor hooks stay silent inside the block. torch calls a tensor's hooks when its gradient
    is captured on the way; a node whose gradient is captured that way runs later, hooks and all, once."""
    kept: List[tuple] = []
    with LOCK:
        for hooks in hook_dicts:
            if hooks:
                kept.append((hooks, dict(hooks)))
                hooks.clear()
        try:
            yield
        finally:
            for hooks, entries in kept:
                hooks.update(entries)


def hook_dict(tensor: torch.Tensor) -> Optional[dict]:
    """The dict that holds ``tensor``'s Python hooks, made now if it has none yet (as torch's own
    register_hook makes it), so hooks registered later land in it too. None for a leaf: its hooks
    are reached through its AccumulateGrad node."""
    if tensor.grad_fn is None:
        return None
    if tensor._backward_hooks is None:
        tensor._backward_hooks = collections.OrderedDict()
        tensor.grad_fn._register_hook_dict(tensor)
    return tensor._backward_hooks


def _set(variable: torch.Tensor, grad) -> None:
    # Direct assignment checks shape and dtype against the variable; the store only ever holds what
    # AccumulateGrad made for this very variable, so skip nothing and let torch check.
    variable.grad = grad
