"""The owner's side of DistributedOptimizer: a local optimizer over the parameters that live here, stepped with one context's gradients."""

from __future__ import annotations

from typing import List

from distautograd.encoding.allowlist import trusted_global
from distautograd.engine import slots
from distautograd.runtime import current
from distautograd.runtime.rref import RRef


class LocalOptimizer:
    def __init__(self, optimizer_class, local_params_rref: List[RRef], *args, **kwargs):
        self._params = [rref.local_value() for rref in local_params_rref]
        self.optim = optimizer_class(self._params, *args, **kwargs)

    def step(self, context_id: int) -> None:
        grads = current.get().contexts.get(context_id).gradients()
        # Steps on one worker are serialized, whatever optimizer they belong to, as torch's are; and
        # .grad is borrowed under the lock passes hold while leaves accumulate (engine.slots).
        with slots.LOCK:
            saved = [param.grad for param in self._params]
            for param in self._params:
                param.grad = grads.get(param)
            try:
                self.optim.step()
            finally:
                for param, grad in zip(self._params, saved):
                    param.grad = grad  # the context holds the gradients; .grad is as it was


@trusted_global
def new_local_optimizer(optimizer_class, local_params_rref, *args, **kwargs) -> RRef:
    return RRef(LocalOptimizer(optimizer_class, local_params_rref, *args, **kwargs))


@trusted_global
def local_optimizer_step(local_optimizer_rref: RRef, context_id: int) -> None:
    local_optimizer_rref.local_value().step(context_id)
