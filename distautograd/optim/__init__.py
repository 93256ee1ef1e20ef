"""DistributedOptimizer: one local optimizer per parameter owner, each stepping with one context's gradients."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List

from distautograd import autograd as dist_autograd
from distautograd import rpc
from distautograd.runtime.optimizers import local_optimizer_step, new_local_optimizer
from distautograd.runtime.rref import RRef


class DistributedOptimizer:
    """torch.distributed.optim.DistributedOptimizer: ``optimizer_class`` runs where the parameters live.

    Args:
        optimizer_class: any ``torch.optim.Optimizer`` subclass.
        params_rref: RRefs to the parameters, on any workers.
        *args, **kwargs: passed to each local ``optimizer_class``.

    Example::

        >>> opt = DistributedOptimizer(torch.optim.SGD, [rref1, rref2], lr=0.05)
        >>> with dist_autograd.context() as context_id:
        ...     loss = ...; dist_autograd.backward(context_id, [loss]); opt.step(context_id)
    """

    def __init__(self, optimizer_class, params_rref: List[RRef], *args: Any, **kwargs: Any):
        by_owner: Dict[Any, List[RRef]] = defaultdict(list)
        for param in params_rref:
            by_owner[param.owner()].append(param)
        futures = [
            rpc.rpc_async(owner, new_local_optimizer, args=(optimizer_class, params, *args), kwargs=kwargs)
            for owner, params in by_owner.items()
        ]
        self.remote_optimizers: List[RRef] = _wait_all(futures, list(by_owner), "create the local optimizers")

    def step(self, context_id: int) -> None:
        """Applies the context's gradients on every owner in parallel; returns when all are done."""
        dist_autograd._is_valid_context(context_id)
        futures = [
            rpc.rpc_async(opt.owner(), local_optimizer_step, args=(opt, context_id)) for opt in self.remote_optimizers
        ]
        _wait_all(futures, [opt.owner() for opt in self.remote_optimizers], "step")


def _wait_all(futures, owners, what: str) -> list:
    results, failures = [], []
    for owner, future in zip(owners, futures):
        try:
            results.append(future.wait())
        except Exception as exc:
            failures.append((owner, exc))
    if failures:
        detail = "; ".join(f"{owner.name}: {type(exc).__name__}: {str(exc).splitlines()[0]}" for owner, exc in failures)
        raise RuntimeError(f"DistributedOptimizer could not {what} on {len(failures)} worker(s): {detail}") from failures[0][1]
    return results


__all__ = ["DistributedOptimizer"]
