"""Two threads in one part of a pass at once: the orders a race can take, forced (a barrier in the
real code's path, nodes that wait for events) so each runs every time, not when the scheduler
happens to."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from distautograd import errors
from distautograd.ids import rank_of
from distautograd.runtime import backward as backward_module, inspection
from distautograd.runtime.pass_failures import PassFailures
from tests.helpers.inprocess import AGENTS, World, backward, backward_in_thread, call, context, gradients

NAMES = ["r0", "r1", "r2"]


def on_to(x, here, there):
    return call(here, there, torch.sin, x)


def test_two_pushes_that_both_start_one_part_start_it_once(monkeypatch):
    """r2 gets its first gradients from r0 and from r1, each push carrying the plan, on two reading
    threads; both find the part unstarted and plan it, but only one of them runs it: every node on
    r2 runs once and the gradients are single-process torch's."""
    barrier = threading.Barrier(2, timeout=10)
    planned = []
    real_start = backward_module.local_pass.start

    def start_of_both(sources, *args, **options):
        if sources and all(rank_of(m) == 2 for m in sources):  # r2's part: wait until the other push plans it too
            planned.append(threading.get_ident())
            barrier.wait()
        return real_start(sources, *args, **options)

    monkeypatch.setattr(backward_module.local_pass, "start", start_of_both)
    world = World(NAMES, rpc_timeout=5)
    try:
        x = torch.randn(3, dtype=torch.float64, requires_grad=True)
        with context("r0", inspect=inspection.GRAPH) as ctx:
            a = call("r0", "r2", torch.exp, x)
            b = call("r0", "r1", on_to, x, "r1", "r2")
            backward("r0", ctx, [(a * b).sum()])
            grads = gradients("r0", ctx.id)
            runs = AGENTS["r2"].contexts.get(ctx.id).runs
        assert len(set(planned)) == 2, planned  # the two pushes did plan the part at once
        assert runs and all(entry["ran"] == 1 for entry in runs.values()), runs
        x2 = x.detach().clone().requires_grad_()
        (want,) = torch.autograd.grad((torch.exp(x2) * torch.sin(x2)).sum(), [x2])
        assert torch.equal(grads[x], want)
    finally:
        world.close()


ENTERED, RELEASE = threading.Event(), threading.Event()
RAN_AFTER: list = []


class InBackward(torch.autograd.Function):
    """x as it is, and in backward ``act(grad)`` before the gradient goes on."""

    @staticmethod
    def forward(ctx, x, act):
        ctx.act = act
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.act(grad)
        return grad, None


def wait_for_release(grad):
    ENTERED.set()
    assert RELEASE.wait(10), "the test never let the node go"


def wait_for_the_waiting_node(grad):
    """Holds a gradient back until the waiting node runs, so it reaches r2 after, not before."""
    assert ENTERED.wait(10), "the waiting node never ran"


def waits(x):
    return InBackward.apply(x, wait_for_release)


def counts(x):
    return InBackward.apply(x, RAN_AFTER.append)


def waits_on(x, here, there):
    return call(here, there, waits, x)


def counts_on(x, here, there):
    return InBackward.apply(call(here, there, counts, x), wait_for_the_waiting_node)


def wait_until(what, predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def arrived_at(name: str) -> int:
    """How many sources of the one part ``name`` holds have delivered."""
    parts = list(AGENTS[name].backward._passes._parts.values())
    return parts[0].local.arrived if len(parts) == 1 and parts[0].local is not None else 0


@pytest.mark.parametrize("heard_by", ["departure notice", "coordinator's abort"])
def test_a_part_whose_root_departs_runs_nothing_more_not_even_what_already_arrived(heard_by, monkeypatch):
    """r2's part holds two gradients: one, from r0, runs in a node that waits; the other, from r3,
    arrived meanwhile and waits its turn behind it. The root, r1, is declared dead: r2 takes the part
    off, and when the waiting node returns (its gradient goes to r0, alive) the part stops there; the
    second node never runs. Heard by the departure notice alone or by the coordinator's abort alone."""
    off = "handle_abort" if heard_by == "departure notice" else "on_departed"
    original = getattr(PassFailures, off)
    monkeypatch.setattr(PassFailures, off, lambda self, *args: None if self.name == "r2" else original(self, *args))
    ENTERED.clear(), RELEASE.clear(), RAN_AFTER.clear()
    world = World(NAMES + ["r3"], rpc_timeout=2)
    try:
        x = torch.randn(3, requires_grad=True)
        with context("r1") as ctx:
            a = call("r1", "r0", waits_on, x, "r0", "r2")
            b = call("r1", "r3", counts_on, x, "r3", "r2")
            root, outcome = backward_in_thread("r1", ctx, [a.sum() + b.sum()])
            try:
                assert ENTERED.wait(5), "r2's waiting node never ran"
                wait_until("r0's gradient to wait its turn at r2", lambda: arrived_at("r2") == 2)
                AGENTS["r0"].coordinator.membership.depart(1, "the test declared it dead", failed=True)
                wait_until("r2 to take the part off", lambda: not AGENTS["r2"].backward.in_flight())
            finally:
                RELEASE.set()
            root.join(10)
            time.sleep(0.3)  # time enough for a node that should not run to run
            assert RAN_AFTER == [], "the part ran on after its root was gone"
            assert isinstance(outcome.get("error"), errors.RpcError), outcome  # the root's pass failed, whichever way
    finally:
        world.close()
