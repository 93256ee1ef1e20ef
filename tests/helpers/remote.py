"""Functions the tests run on other workers; workers load them because they allow the 'tests' module."""

from __future__ import annotations

import os
import threading
import time

import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc


def add(a, b):
    return a + b


def echo(x):
    return x


def raise_value_error(message):
    raise ValueError(message)


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)


def raise_custom():
    raise NeedsTwoArgs("x", "y")


def look_up_through(path, key):
    """Calls on along ``path``; its last worker looks ``key`` up in an empty dict (a KeyError)."""
    if path:
        return rpc.rpc_sync(path[0], look_up_through, args=(path[1:], key))
    return {}[key]


def nested_add(to, x, y):
    return rpc.rpc_sync(to, add, args=(x, y))


def call_back(to, func, args):
    return rpc.rpc_sync(to, func, args=args)


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def touch(path):
    with open(path, "w") as f:
        f.write("ran")
    return path


def pid():
    return os.getpid()


def whoami():
    return rpc.get_worker_info()


def still_owned(rref_ids):
    """Which of these rref ids this worker still holds a value for."""
    from distautograd.runtime.current import get as current_agent

    store = current_agent().rrefs
    return [store.owns(i) for i in rref_ids]


def debug_info():
    return dist_autograd._get_debug_info()


def rref_value_plus(rref, x):
    return rref.to_here() + x


def rref_local_sum(rref):
    return rref.local_value().sum()


def make_rref(value):
    return rpc.RRef(value)


@rpc.functions.async_execution
def async_add_chained(to, x, y, z):
    return rpc.rpc_async(to, torch.add, args=(x, y)).then(lambda fut: fut.wait() + z)


@rpc.functions.async_execution
def async_not_a_future():
    return 1


class Counter:
    def __init__(self, start=0):
        self.value = start
        self._lock = threading.Lock()

    def increment(self, by=1):
        with self._lock:
            self.value += by
            return self.value

    def get(self):
        return self.value

    @rpc.functions.async_execution
    def add_later(self, x):
        fut = torch.futures.Future()
        threading.Timer(0.05, lambda: fut.set_result(self.value + x)).start()
        return fut


class Unpicklable:
    def __reduce__(self):
        raise TypeError("Unpicklable refuses to be pickled")


def return_unpicklable():
    return Unpicklable()


class RunsShellWhenLoaded:
    """A value whose pickle reduces to os.system: whoever unpickles it runs the command."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def return_shell_payload(path):
    return RunsShellWhenLoaded(path)


# ---------------------------------------------------------------- autograd helpers

class FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        raise ValueError("backward exploded on purpose")


def fail_in_backward(x):
    return FailingBackward.apply(x)


class SlowBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        time.sleep(5)
        return grad * 2


def slow_in_backward(x):
    return SlowBackward.apply(x)


_ps_weight = torch.arange(1.0, 9.0).requires_grad_()


def ps_forward(x):
    return (x * _ps_weight).sum()


def ps_weight_grad(context_id):
    return dist_autograd.get_gradients(context_id).get(_ps_weight)


def ps_weight():
    return _ps_weight.detach().clone()


def context_ids():
    from distautograd.runtime.current import get as current_agent

    return current_agent().contexts.ids()


def passes_in_flight():
    from distautograd.runtime.current import get as current_agent

    return current_agent().backward.in_flight()




def owner_rref_backward(x):
    rpc.RRef(ps_forward(x)).backward()
    return take_ps_weight_dot_grad()


def take_ps_weight_dot_grad():
    grad, _ps_weight.grad = _ps_weight.grad, None
    return grad


def make_linear(seed, fan_in=4, fan_out=4):
    torch.manual_seed(seed)
    return torch.nn.Linear(fan_in, fan_out)


def forward_of(module_rref, x):
    return module_rref.local_value()(x)


def parameter_rrefs(module_rref):
    return [rpc.RRef(p) for p in module_rref.local_value().parameters()]


def parameters_of(module_rref):
    return [p.detach().clone() for p in module_rref.local_value().parameters()]


def wire_to(name):
    """How this worker reaches ``name``: "unix", "tcp" or "grpc"."""
    from distautograd.runtime.current import get as current_agent

    agent = current_agent()
    return agent.peers.to(agent.world.resolve(name).id).transport.kind


def shared_memory_use():
    """(segments made, segments lent now) of this worker's shared memory pool."""
    from distautograd.runtime.current import get as current_agent

    pool = current_agent().connector.pool
    return (0, 0) if pool is None else (pool.made, pool.lent_count())


def checksum(t):
    return t.double().sum().item(), t.shape, t.dtype


def big_tensor(megabytes):
    return torch.arange(megabytes << 18, dtype=torch.float32)


def keep_and_check(t, value):
    """Holds a received tensor a moment, then checks it still has the values it arrived with."""
    before = t.clone()
    time.sleep(0.002)
    return bool(torch.equal(t, before)) and bool((t == value).all())


def filled(megabytes, value):
    return torch.full((megabytes << 18,), float(value))


@torch.jit.script
def scripted_mul_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x * y + 1


def get_scripted():
    return scripted_mul_add


class Shape:
    def __init__(self, width, height):
        self.width, self.height = width, height

    def area(self):
        return self.width * self.height

    @classmethod
    def square_area(cls, side):
        return cls(side, side).area()

    @staticmethod
    def scaled(x, by):
        return x * by


def _make_sparse_table():
    torch.manual_seed(3)
    return torch.nn.Embedding(10, 3, sparse=True)


_sparse_table = _make_sparse_table()


def sparse_lookup(ids):
    return _sparse_table(ids)


def sparse_table_grad(context_id):
    return dist_autograd.get_gradients(context_id)[_sparse_table.weight]


def gather_among(names, value):
    return rpc.api._all_gather(value, worker_names=names)


def thread_name():
    return threading.current_thread().name


_events = {}
_events_lock = threading.Lock()


def _event(key):
    with _events_lock:
        return _events.setdefault(key, threading.Event())


def wait_for_event(key, seconds):
    """Blocks on something that is no future of the runtime's: only the watchdog frees the connection."""
    return _event(key).wait(seconds)


def set_event(key):
    _event(key).set()


def ps_forward_constant(x):
    return (x.detach() * _ps_weight).sum()


class NanInBackward(torch.autograd.Function):
    """Doubles its input; its backward is wrong on purpose: NaN where the input is negative."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.where(x < 0, torch.full_like(grad, float("nan")), grad * 2)


def doubled_badly(x):
    return NanInBackward.apply(x)  # the user's own line the anomaly report must reach


def sqrt_times_zero(x):
    return x.sqrt() * 0  # backward at 0: SqrtBackward0 gets 0 and returns 0 / 0 = NaN


def reciprocal_sqrt(x):
    return x.sqrt()  # backward at 0: SqrtBackward0 returns grad / 0 = Inf


class Scaled(torch.autograd.Function):
    """A custom Function in a graph: x * 3, backward grad * 3."""

    @staticmethod
    def forward(ctx, x):
        return x * 3

    @staticmethod
    def backward(ctx, grad):
        return grad * 3


def scaled(x):
    return Scaled.apply(x)


def linear_of(seed, x):
    """A module's parameters in a graph: its leaves must be named by their path."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[-1], 2))
    _models.append(model)
    return model(x)


_models = []


def trace_events(context_id):
    from distautograd.views import trace

    return trace.take(context_id)


_held_rrefs = []


def hold(rref):
    """Keeps a fork of ``rref`` on this worker until the process ends."""
    _held_rrefs.append(rref)
    return len(_held_rrefs)


def doubled_in_place_then_tripled(x):
    """Modifies the received tensor in place (it is the output of the recv node, as in torch)."""
    assert x.grad_fn.name() == "torch::distributed::autograd::RecvRpcBackward", x.grad_fn.name()
    x.mul_(2)
    return x * 3


def records_forward_stack(x):
    """Whether a node made here keeps its forward stack (torch does so in anomaly mode only)."""
    y = x * 2
    return "traceback_" in y.grad_fn.metadata, torch.is_anomaly_enabled()


def chain_sum(xs):
    """x0 + x1 + ... in that order (the same arithmetic here and in a single-process check)."""
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def chain_sum_then_exp_on(xs, other):
    """The sum here, its exp on ``other``: what the sum's gradient sets off is too big to travel along."""
    return rpc.rpc_sync(other, torch.exp, args=(chain_sum(xs),))


def what_the_callee_sees(x):
    """(grad mode on here, x requires grad, x has a grad_fn: a recv node)."""
    return torch.is_grad_enabled(), x.requires_grad, x.grad_fn is not None
