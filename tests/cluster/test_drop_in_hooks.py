"""Hooks run in the distributed backward exactly as in single-process autograd (real processes).

Every program in tests/helpers/hooked.py runs across this process and worker1, then in this
process alone with plain torch.autograd. Gradients must be equal bit for bit, and every hook must
have run as often, in the same order, on the same values, on the worker it belongs to.
"""

import pytest
import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc
from tests.helpers import hooked

pytestmark = pytest.mark.usefixtures("trainer")


def distributed_run(program):
    hooked.take_seen()
    rpc.rpc_sync("worker1", hooked.take_seen)
    rpc.rpc_sync("worker1", hooked.hooked_weight)
    with dist_autograd.context() as context_id:
        loss, leaves = program(lambda fn, *args: rpc.rpc_sync("worker1", fn, args=args))
        dist_autograd.backward(context_id, [loss])
        grads = dist_autograd.get_gradients(context_id)
        weight_grad, weight_dot_grad = rpc.rpc_sync("worker1", hooked.weight_grad_here, args=(context_id,))
    got = {name: (t.grad if name.endswith("(retained)") else grads.get(t)) for name, t in leaves.items()}
    got["remote weight"] = weight_grad
    seen = {"here": hooked.take_seen(), "worker1": rpc.rpc_sync("worker1", hooked.take_seen)}
    return got, seen, [t.grad for name, t in leaves.items() if not name.endswith("(retained)")] + [weight_dot_grad]


def single_process_run(program):
    hooked.take_seen()
    hooked.hooked_weight()
    remote_seen = []
    loss, leaves = program(lambda fn, *args: fn(*args))
    loss.backward()
    want = {name: t.grad for name, t in leaves.items()}
    want["remote weight"] = hooked.weight_grad_here()
    everything = hooked.take_seen()
    for entry in everything:  # what the weight's hooks saw, worker1 saw in the distributed run
        (remote_seen if entry[0].startswith("weight") else hooked.seen).append(entry)
    return want, {"here": hooked.take_seen(), "worker1": remote_seen}


@pytest.mark.parametrize("program", hooked.PROGRAMS, ids=lambda p: p.__name__)
def test_hooks_run_as_in_single_process_autograd(program):
    got, got_seen, dot_grads = distributed_run(program)
    want, want_seen = single_process_run(program)
    for name, value in want.items():
        if value is None:
            assert got[name] is None, f"{name}: distributed has a gradient, torch has none"
            continue
        assert got[name] is not None, f"{name}: torch has a gradient, distributed has none"
        assert torch.equal(got[name], value), f"{name}: distributed {got[name]} != torch {value}"
    for where in ("here", "worker1"):
        assert [n for n, _ in got_seen[where]] == [n for n, _ in want_seen[where]], where
        for (name, g), (_, w) in zip(got_seen[where], want_seen[where]):
            assert torch.equal(g, w), f"{name} on {where} saw {g}, torch's saw {w}"
    assert all(g is None for g in dot_grads), "a distributed backward must leave .grad alone"


def test_the_leaf_hook_case_from_the_issue_holds_6_not_3():
    got, _, _ = distributed_run(hooked.leaf_hook)
    assert torch.equal(got["t1"], torch.full((2, 2), 6.0))
