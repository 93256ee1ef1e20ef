"""DistributedOptimizer: local optimizers where the parameters live, stepping with one context's gradients."""

import re
import threading

import pytest
import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc
from distautograd.optim import DistributedOptimizer
from tests.helpers import remote
from tests.helpers.processes import outside_context

pytestmark = pytest.mark.usefixtures("trainer")


def model_on_workers(seed):
    m1 = rpc.remote("worker1", remote.make_linear, args=(seed,))
    m2 = rpc.remote("worker2", remote.make_linear, args=(seed + 1,))
    return m1, m2


def distributed_forward(m1, m2, w, x):
    h = rpc.rpc_sync("worker1", remote.forward_of, args=(m1, x))
    h = rpc.rpc_sync("worker2", remote.forward_of, args=(m2, torch.tanh(h)))
    return (h @ w).pow(2).sum()


@pytest.mark.parametrize(
    "optimizer_class, kwargs",
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.Adam, {"lr": 0.01}), (torch.optim.RMSprop, {"lr": 0.01})],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_steps_match_the_same_optimizer_in_one_process(optimizer_class, kwargs):
    m1, m2 = model_on_workers(11)
    w = torch.randn(4, requires_grad=True)
    params = rpc.rpc_sync("worker1", remote.parameter_rrefs, args=(m1,))
    params += rpc.rpc_sync("worker2", remote.parameter_rrefs, args=(m2,)) + [rpc.RRef(w)]
    optimizer = DistributedOptimizer(optimizer_class, params, **kwargs)

    l1, l2 = remote.make_linear(11), remote.make_linear(12)
    lw = w.detach().clone().requires_grad_()
    local = optimizer_class([*l1.parameters(), *l2.parameters(), lw], **kwargs)

    for step in range(3):
        x = torch.randn(2, 4, generator=torch.Generator().manual_seed(step))
        with dist_autograd.context() as context_id:
            dist_autograd.backward(context_id, [distributed_forward(m1, m2, w, x)])
            optimizer.step(context_id)
        local.zero_grad()
        ((l2(torch.tanh(l1(x))) @ lw).pow(2).sum()).backward()
        local.step()

    got = rpc.rpc_sync("worker1", remote.parameters_of, args=(m1,)) + rpc.rpc_sync("worker2", remote.parameters_of, args=(m2,))
    for remote_param, local_param in zip(got + [w.detach()], [*l1.parameters(), *l2.parameters(), lw]):
        assert torch.equal(remote_param, local_param.detach())
    assert w.grad is None  # the context held the gradients; .grad stays clean


def test_an_unknown_context_is_a_clear_error():
    optimizer = DistributedOptimizer(torch.optim.SGD, [rpc.RRef(torch.zeros(2, requires_grad=True))], lr=0.1)
    with pytest.raises(RuntimeError, match="Could not find autograd context with id: 12345"):
        optimizer.step(12345)


def test_failures_on_several_owners_name_each_one():
    m1, m2 = model_on_workers(3)
    params = rpc.rpc_sync("worker1", remote.parameter_rrefs, args=(m1,)) + rpc.rpc_sync(
        "worker2", remote.parameter_rrefs, args=(m2,)
    )
    optimizer = DistributedOptimizer(torch.optim.SGD, params, lr=0.1)
    with dist_autograd.context() as context_id:
        # stepped from another thread, outside the context, which never reached the owners
        failure = outside_context(lambda: _raised(optimizer.step, context_id))
    assert isinstance(failure, RuntimeError)
    assert re.search(r"on 2 worker\(s\): worker1: .*Could not find autograd context.*; worker2: ", str(failure))


def _raised(fn, *args):
    try:
        fn(*args)
    except Exception as exc:
        return exc
    return None


def test_concurrent_steps_on_one_owner_lose_no_update():
    ps_side = rpc.remote("worker3", remote.make_linear, args=(0, 1000, 1))
    params = rpc.rpc_sync("worker3", remote.parameter_rrefs, args=(ps_side,))
    ps_optimizer = DistributedOptimizer(torch.optim.SGD, params, lr=1.0)
    before = rpc.rpc_sync("worker3", remote.parameters_of, args=(ps_side,))
    errors = []

    def step():
        try:
            for _ in range(10):
                with dist_autograd.context() as context_id:
                    out = rpc.rpc_sync("worker3", remote.forward_of, args=(ps_side, torch.ones(1, 1000)))
                    dist_autograd.backward(context_id, [out.sum()])
                    ps_optimizer.step(context_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=step) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    after = rpc.rpc_sync("worker3", remote.parameters_of, args=(ps_side,))
    # 80 steps, each subtracting a gradient of exactly 1 from every weight and the bias; a lost
    # update would be off by 1, rounding of 80 subtractions by far less
    for a, b in zip(after, before):
        assert torch.allclose(a, b - 80, rtol=0, atol=1e-3)
