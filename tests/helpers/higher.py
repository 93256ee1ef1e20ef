"""Layers whose weights live on the worker that runs them, for higher-order gradient tests.

Each process has its own copy of every weight, made the same way, so a program can run once
across workers (``call`` = rpc_sync) and once in this process (``call`` = plain call) on equal values.
"""

from __future__ import annotations

from typing import Dict

import torch

_weights: Dict[int, torch.Tensor] = {}


def weight(seed: int, width: int = 5) -> torch.Tensor:
    if seed not in _weights:
        g = torch.Generator().manual_seed(seed)
        _weights[seed] = (torch.randn(width, width, generator=g, dtype=torch.float64) / width ** 0.5).requires_grad_()
    return _weights[seed]


def layer(x: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.tanh(x @ weight(seed)) * 1.5


def cube(x: torch.Tensor) -> torch.Tensor:
    return x ** 3


def sin_of(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x)


def weight_grad(context_id: int, seed: int):
    from distautograd import autograd as dist_autograd

    return dist_autograd.get_gradients(context_id).get(weight(seed))


def reset() -> None:
    _weights.clear()
