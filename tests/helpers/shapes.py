"""Graph shapes for the autograd oracle: each runs distributed, or in one process for plain torch.autograd.

A shape is a function ``shape(mode) -> roots``. It makes its leaves with ``param(key, ...)`` on
whichever worker it runs, and moves work between workers with ``call(mode, to, fn, *args)``.
Distributed, ``call`` is an rpc (rpc_sync, rpc_async or remote + to_here) and ``param`` lives
in the worker's process. In the oracle, everything runs here: ``call`` just switches the
"virtual" worker, so each worker's parameters are separate tensors with the same values.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import zlib

import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc

MODES = ("sync", "async", "remote")
_local = threading.local()
_params: dict = {}
_oracle_params: dict = {}
counts = collections.Counter()
_counts_lock = threading.Lock()


def _virtual():
    return getattr(_local, "worker", None)


def here() -> str:
    return _virtual() or rpc.get_worker_info().name


@contextlib.contextmanager
def oracle():
    """Runs a shape in this process as if its calls went to other workers."""
    previous = _virtual()
    _local.worker = "trainer"
    try:
        yield
    finally:
        _local.worker = previous


def param(key: str, *shape: int, dtype=torch.float32) -> torch.Tensor:
    store = _oracle_params if _virtual() else _params
    name = (here(), f"{key}{list(shape)}:{str(dtype).removeprefix('torch.')}")
    if name not in store:
        g = torch.Generator().manual_seed(zlib.crc32(repr(name).encode()))
        store[name] = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return store[name]


def call(mode: str, to: str, fn, *args):
    if _virtual():
        previous, _local.worker = _local.worker, to
        try:
            return fn(*args)
        finally:
            _local.worker = previous
    if mode == "sync":
        return rpc.rpc_sync(to, fn, args=args)
    if mode == "async":
        return rpc.rpc_async(to, fn, args=args).wait()
    return rpc.remote(to, fn, args=args).to_here()


class Count(torch.autograd.Function):
    """x * 1.5, counting how often its backward runs in this process."""

    @staticmethod
    def forward(ctx, x):
        return x * 1.5

    @staticmethod
    def backward(ctx, grad):
        with _counts_lock:
            counts["backward"] += 1
        return grad * 1.5


# ---------------------------------------------------------------- helpers the workers run


def reset_counts() -> None:
    counts.clear()


def backward_count() -> int:
    return counts["backward"]


def grads_by_key(context_id: int) -> dict:
    """This worker's parameters that got gradients in the context: {(worker, key): gradient}."""
    grads = dist_autograd.get_gradients(context_id)
    return {name: grads[t] for name, t in _params.items() if name[0] == here() and t in grads}


def oracle_leaves() -> dict:
    return dict(_oracle_params)


def stage(x, key):
    return torch.tanh(x @ param(key, x.shape[-1], x.shape[-1]))


def scaled(x, key):
    return x * param(key, *x.shape)


def counted_stage(x, key):
    return Count.apply(stage(x, key))


def nested_chain(mode, path, x):
    y = stage(x, "nested")
    if not path:
        return y
    return call(mode, path[0], nested_chain, mode, path[1:], y)


def use_first(a, b):
    return a * 2


def pair(x, key):
    h = stage(x, key)
    return h.sum(0), {"double": h * 2, "plain": torch.ones(2)}


def own_param(key):
    return param(key, 4)


def mixed(x, key):
    return (x.double() * param(key, *x.shape, dtype=torch.float64)).exp()


def call_back_into(mode, to, x):
    h = Count.apply(x * 3)
    return call(mode, to, scaled, h, "callback") + h


def diamond(mode, to, x):
    """G uses F's output and, directly, F's input W: F's node is a boundary (F's output is sent)."""
    w = param("dw", *x.shape)
    f = Count.apply(w * x)
    sent = call(mode, to, torch.sin, f)
    return (f * w).sum() + sent.sum()


def split_send(mode, x):
    a, b = Count.apply(x).split(2)
    return call(mode, "worker1", torch.exp, a).sum() + call(mode, "worker2", torch.sin, b).sum()


def linear_module():
    torch.manual_seed(7)
    module = torch.nn.Linear(4, 4)
    store = _oracle_params if _virtual() else _params
    for name, p in module.named_parameters():
        store[(here(), f"module.{name}")] = p
    return module


# ---------------------------------------------------------------- the shapes


def chain_over_three_workers(mode):
    x = param("x", 2, 4)
    for w in ("worker1", "worker2", "worker3"):
        x = call(mode, w, stage, x, "chain")
    return [x.sum()]


def nested_calls(mode):
    x = param("x", 2, 4)
    return [call(mode, "worker1", nested_chain, mode, ["worker2", "worker3"], x).sum()]


def fan_out_fan_in(mode):
    h = Count.apply(param("x", 2, 4))
    parts = [call(mode, w, stage, h, "fan") for w in ("worker1", "worker2", "worker3")]
    return [sum(p.sum() for p in parts)]


def non_leaf_sent_twice(mode):
    h = Count.apply(param("x", 3) * param("w", 3))
    return [(call(mode, "worker1", scaled, h, "s") * call(mode, "worker2", scaled, h, "s")).sum()]


def round_trip_meets_itself(mode):
    h = Count.apply(param("x", 2, 4) * 0.5)
    back = call(mode, "worker1", counted_stage, h, "rt")
    return [(back * h).sum()]


def multiple_roots(mode):
    x = param("x", 2, 4)
    a = call(mode, "worker1", stage, x, "r1")
    b = call(mode, "worker2", stage, a, "r2")
    return [a.sum(), (b * b).sum()]


def unused_argument(mode):
    x, y = param("x", 3), param("y", 3)
    return [call(mode, "worker1", use_first, x, y).sum()]


def unreached_send_point(mode):
    x = param("x", 3)
    call(mode, "worker2", scaled, x, "ignored")  # its result never reaches the loss
    return [call(mode, "worker1", scaled, x, "used").sum()]


def mixed_dtypes(mode):
    x = param("x", 3)
    return [call(mode, "worker1", mixed, x, "m64").sum()]


def values_returned_by_the_callee(mode):
    x = param("x", 2, 4)
    total, extra = call(mode, "worker2", pair, x, "ret")
    return [total.sum() + extra["double"].sum() + extra["plain"].sum()]


def rref_held_module(mode):
    x = param("x", 2, 4)
    if _virtual():
        return [call(mode, "worker1", linear_module)(x).sum()]
    rref = rpc.remote("worker1", linear_module)
    out = {"sync": rref.rpc_sync, "async": rref.rpc_async, "remote": rref.remote}[mode]().forward(x)
    out = out.wait() if mode == "async" else out.to_here() if mode == "remote" else out
    return [out.sum()]


def calls_to_self(mode):
    x = param("x", 2, 4)
    y = call(mode, "trainer", stage, x, "self")
    return [call(mode, "worker1", stage, y, "after").sum()]


def worker_leaf_sent_back(mode):
    p = call(mode, "worker3", own_param, "p")
    return [(p * param("x", 4)).sum()]


def nested_round_trip_through_the_caller(mode):
    x = param("x", 3)
    return [call(mode, "worker1", call_back_into, mode, "trainer", x).sum()]


def tensors_in_containers(mode):
    x, y = param("x", 3), param("y", 3)
    out = call(mode, "worker2", torch.stack, [x * 2, y])
    return [(out ** 2).sum()]


def diamond_through_a_boundary(mode):
    return [call(mode, "worker2", diamond, mode, "worker3", param("x", 3))]


def multi_output_pieces_to_two_workers(mode):
    return [split_send(mode, param("x", 4))]


def leaf_sent_to_every_worker(mode):
    w = param("w", 3)
    return [sum(call(mode, name, scaled, w, "k").sum() for name in ("worker1", "worker2", "worker3"))]


SHAPES = [
    chain_over_three_workers,
    nested_calls,
    fan_out_fan_in,
    non_leaf_sent_twice,
    round_trip_meets_itself,
    multiple_roots,
    unused_argument,
    unreached_send_point,
    mixed_dtypes,
    values_returned_by_the_callee,
    rref_held_module,
    calls_to_self,
    worker_leaf_sent_back,
    nested_round_trip_through_the_caller,
    tensors_in_containers,
    diamond_through_a_boundary,
    multi_output_pieces_to_two_workers,
    leaf_sent_to_every_worker,
]



def dead_relu(x):
    return torch.relu(x - 1e6)  # every unit off: the gradient back to the caller is all zeros


def zero_gradient_across_workers(mode):
    x = param("x", 4)
    return [call(mode, "worker2", dead_relu, x * 2).sum() + (x * 3).sum()]


SHAPES.append(zero_gradient_across_workers)
