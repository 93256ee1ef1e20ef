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


def layer_then(x: torch.Tensor, seed: int, to: str, then_seed: int) -> torch.Tensor:
    """``layer`` here, then ``layer`` on worker ``to``, called from here: the call waits for a nested
    call, so the worker goes on reading (and running later calls) on another thread."""
    from distautograd import rpc

    return rpc.rpc_sync(to, layer, args=(layer(x, seed), then_seed))


def cube(x: torch.Tensor) -> torch.Tensor:
    return x ** 3


def sin_of(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x)


def weight_grad(context_id: int, seed: int):
    from distautograd import autograd as dist_autograd

    return dist_autograd.get_gradients(context_id).get(weight(seed))


def reset() -> None:
    _weights.clear()


runs = {"first": 0, "second": 0}


class _CountSecond(torch.autograd.Function):
    """The identity; counts how often a second-order pass runs it."""

    @staticmethod
    def forward(ctx, g):
        return g.clone()

    @staticmethod
    def backward(ctx, gg):
        runs["second"] += 1
        return gg


class Doubled(torch.autograd.Function):
    """x * 2, whose (differentiable) backward counts its runs and leaves a counting node for the next order."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        runs["first"] += 1
        return _CountSecond.apply(g) * 2


def doubled_squared(x):
    return Doubled.apply(x) ** 2


def take_runs():
    out = dict(runs)
    runs.update(first=0, second=0)
    return out


class WrongSquare(torch.autograd.Function):
    """x ** 2 with a wrong backward on purpose: 2x + 0.1 instead of 2x."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (2 * x + 0.1)


def wrong_square(x):
    return WrongSquare.apply(x)


class CubeWrongTwice(torch.autograd.Function):
    """x ** 3 with a right backward (3 x²) built on WrongSquare: its second derivative is wrong."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * WrongSquare.apply(x)


def cube_wrong_twice(x):
    return CubeWrongTwice.apply(x)
