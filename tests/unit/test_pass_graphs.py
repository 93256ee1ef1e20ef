"""The two planners of a pass's graph side by side: the compiled one (native/csrc/pass_graph.cpp) gives
exactly what the Python one (engine/graph.py) gives -- the same dicts, keys and lists in the same order --
on random graphs with shared nodes, repeated edges, recv points, leaves, many sources and nodes made on
other threads."""

from __future__ import annotations

import random
import threading

import pytest
import torch
from torch.autograd.graph import GradientEdge, get_gradient_edge

from distautograd import native
from distautograd.engine import nodes
from distautograd.engine.graph import ROOTS, PassGraph
from tests.helpers.paths import take_path

pytestmark = pytest.mark.skipif(native.core is None, reason="the compiled core is not built")

FIELDS = ("children", "order", "index", "parents", "bit", "mask", "reach", "leaves")


class _Point:
    def __init__(self, message_id: int):
        self.message_id = message_id
        self.anchor = None


def _same_plan(sources) -> PassGraph:
    ours, reference = PassGraph(sources, native_plan=True), PassGraph(sources, native_plan=False)
    for field in FIELDS:
        got, want = getattr(ours, field), getattr(reference, field)
        assert type(got) is type(want), field
        assert got == want, field
        if isinstance(want, dict):
            assert list(got) == list(want), f"{field}: keys in another order"
            for key in want:
                assert got[key] == want[key] and type(got[key]) is type(want[key]), (field, key)
    return ours


def _random_graph(rng: random.Random, size: int):
    """Tensors made by a random mix of ops over leaves and recv points; returns them all."""
    made = [torch.randn(3, requires_grad=True) for _ in range(rng.randint(1, 4))]
    for _ in range(rng.randint(0, 2)):
        count = rng.randint(1, 3)
        outs, _ = nodes.make_recv([torch.randn(3, requires_grad=True) for _ in range(count)],
                                  [_Point(rng.randrange(1 << 40)) for _ in range(count)])
        made.extend(outs)
    for _ in range(size):
        a, b = rng.choice(made), rng.choice(made)
        op = rng.randrange(7)
        if op == 0:
            made.append(a * b)
        elif op == 1:
            made.append(a * a)  # one node, two edges to the same child
        elif op == 2:
            made.extend(torch.stack([a, b]).unbind(0))  # one node, several outputs
        elif op == 3:
            made.append(torch.sin(a) + b.detach())
        elif op == 4:
            made.append(a.clone().mul_(2))
        elif op == 5:
            made.append(torch.cat([a, b, a])[:3])
        else:
            made.append(a.relu())
    return made


def _sources(rng: random.Random, made, count: int):
    picked = {}
    for _ in range(count):
        key = rng.randrange(1, 1 << 50)
        edges = [get_gradient_edge(t) for t in rng.sample(made, rng.randint(1, min(3, len(made))))]
        if rng.random() < 0.1:
            edges.append(GradientEdge(None, 0))  # a source edge that leads nowhere
        picked[key] = edges
    if rng.random() < 0.5:
        picked[ROOTS] = [get_gradient_edge(rng.choice(made))]
    return picked


@pytest.mark.parametrize("seed", range(60))
def test_random_graphs_plan_alike(seed):
    rng = random.Random(seed)
    made = _random_graph(rng, rng.randint(1, 40))
    _same_plan(_sources(rng, made, rng.randint(1, 6)))


def test_more_sources_than_a_word_holds():
    rng = random.Random(7)
    made = _random_graph(rng, 60)
    plan = _same_plan(_sources(rng, made, 150))
    assert max(plan.bit.values()) >= 1 << 64
    assert max(plan.mask.values()).bit_length() > 64


def test_nodes_made_on_other_threads_keep_the_python_order():
    """torch's sequence numbers count per thread, so two threads' nodes can tie: both planners then keep
    the order the walk met them in."""
    base = torch.randn(3, requires_grad=True)
    made = []

    def build():
        x = base * 2
        made.append((x + 1).sin())

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
        thread.join()
    seqs = [t.grad_fn._sequence_nr() for t in made]
    assert len(set(seqs)) < len(seqs), "the threads' nodes should tie"
    _same_plan({1: [get_gradient_edge(t) for t in made], 2: [get_gradient_edge(made[0])]})


def test_leaves_and_recv_points_stop_the_walk():
    leaf = torch.randn(2, requires_grad=True)
    sent = torch.randn(2, requires_grad=True) * leaf
    made_by = sent.grad_fn
    (received,), _ = nodes.make_recv([sent], [_Point(9)])
    y = (received * leaf).sum()
    plan = _same_plan({ROOTS: [get_gradient_edge(y)]})
    assert plan.leaves == [n for n in plan.order if nodes.is_leaf(n)] and len(plan.leaves) == 1
    recv = [n for n in plan.order if nodes.recv_points(n) is not None]
    assert len(recv) == 1 and plan.children[recv[0]] == [] and plan.children[plan.leaves[0]] == []
    assert made_by not in plan.index  # what made the received tensor is another worker's graph


def test_an_object_torch_did_not_make_is_left_to_python():
    assert native.core.plan_pass_graph([(1, [object()])], nodes.LEAF_NODE, nodes.RECV_TYPES) is None
    assert native.core.plan_pass_graph([(1, [None])], nodes.LEAF_NODE, nodes.RECV_TYPES) is not None


def test_the_native_planner_is_the_default_on_the_native_path(monkeypatch):
    y = (torch.randn(2, requires_grad=True) * 3).sum()
    monkeypatch.setattr(PassGraph, "_plan", lambda self: pytest.fail("the Python planner ran"))
    take_path(monkeypatch, "1")
    assert len(PassGraph({ROOTS: [get_gradient_edge(y)]})) == 3
    take_path(monkeypatch, "0")
    with pytest.raises(pytest.fail.Exception):
        PassGraph({ROOTS: [get_gradient_edge(y)]})
