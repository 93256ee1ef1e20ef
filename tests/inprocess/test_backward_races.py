"""Two threads in one part of a pass at once: the orders a race can take, forced with a barrier in
the real code's path, so each is run every time rather than when the scheduler happens to."""

from __future__ import annotations

import threading

import torch

from distautograd.ids import rank_of
from distautograd.runtime import backward as backward_module, inspection
from tests.helpers.inprocess import AGENTS, World, backward, call, context, gradients

NAMES = ["r0", "r1", "r2"]


def on_to(x, here, there):
    return call(here, there, torch.sin, x)


def test_two_pushes_that_both_start_one_part_start_it_once(monkeypatch):
    """r2 gets its first gradients from r0 and from r1, each push carrying the plan, on two reading
    threads; both find the part unstarted and plan it, but only one of them runs it: every node on
    r2 runs once and the gradients are single-process torch's."""
    barrier = threading.Barrier(2, timeout=10)
    planned = []
    real_graph = backward_module.PassGraph

    def graph_of_both(sources):
        if sources and all(rank_of(m) == 2 for m in sources):  # r2's part: wait until the other push plans it too
            planned.append(threading.get_ident())
            barrier.wait()
        return real_graph(sources)

    monkeypatch.setattr(backward_module, "PassGraph", graph_of_both)
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
