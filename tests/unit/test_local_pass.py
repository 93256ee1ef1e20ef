"""One worker's part of a pass, driven directly: arrivals, duplicates, closing, and what it reports.

One worker here: ``x`` is a leaf; the roots reach it through ``(x * 2).sum()`` and a send point
reaches it through ``x * 3`` (the tensor that "went" to another worker, whose gradient comes back).
"""

import re
import time

import pytest
import torch
from torch.autograd.graph import get_gradient_edge

from distautograd.engine import order
from distautograd.engine.graph import ROOTS, PassGraph
from distautograd.engine.local_pass import LocalPass, UnknownSource
from distautograd.engine.slots import GradStore

SENT = 7  # the send point's message id


class Part:
    """A LocalPass over the graph above, with what it sent, how it finished and what it observed."""

    def __init__(self, **options):
        self.x = torch.tensor([1.0, 2.0], requires_grad=True)
        self.sent = self.x * 3
        self.root = (self.x * 2).sum()
        edges = {ROOTS: [get_gradient_edge(self.root)], SENT: [get_gradient_edge(self.sent)]}
        keys = {SENT: order.place([edges[SENT][0].node])}
        order.place([edges[ROOTS][0].node])
        self.store = GradStore()
        self.finished, self.waves = [], []
        self.local = LocalPass(PassGraph(edges), keys, self.store, send=lambda grads, last: None,
                               finish=self.finished.append, observe=self._observe, **options)

    def _observe(self, began, ended, nodes, whole):
        self.waves.append((began, ended, nodes, whole))

    def grad(self):
        return self.store.snapshot().get(self.x)


def test_a_node_runs_once_every_source_has_delivered_and_the_pass_finishes():
    part = Part()
    part.local.arrive(SENT, [torch.ones(2)])
    assert part.grad() is None and not part.finished  # x still waits for the roots
    part.local.arrive(ROOTS, [torch.tensor(1.0)])
    assert torch.equal(part.grad(), torch.tensor([5.0, 5.0])) and part.finished == [None]
    assert part.local.done and part.local.leaves_reached == 1


def test_a_retried_delivery_counts_once():
    part = Part()
    part.local.arrive(SENT, [torch.ones(2)])
    part.local.arrive(SENT, [torch.ones(2)])
    assert part.grad() is None and not part.finished
    part.local.arrive(ROOTS, [torch.tensor(1.0)])
    part.local.arrive(ROOTS, [torch.tensor(1.0)])
    assert torch.equal(part.grad(), torch.tensor([5.0, 5.0])) and part.finished == [None]


def test_a_source_that_sent_no_gradient_still_completes_its_nodes():
    part = Part()
    part.local.arrive(SENT, [None])
    part.local.arrive(ROOTS, [torch.tensor(1.0)])
    assert torch.equal(part.grad(), torch.tensor([2.0, 2.0])) and part.finished == [None]


def test_a_closed_part_runs_nothing_and_reports_nothing():
    part = Part()
    part.local.close()
    part.local.arrive(SENT, [torch.ones(2)])
    part.local.arrive(ROOTS, [torch.tensor(1.0)])
    assert part.grad() is None and part.finished == [] and part.waves == []


def test_an_unknown_source_is_a_peers_mistake_named_in_the_error():
    part = Part()
    with pytest.raises(UnknownSource, match=re.escape(
            "gradient arrived for send point 999, which takes no part in this pass here")):
        part.local.arrive(999, [torch.ones(2)])


def test_every_wave_is_observed_in_microseconds_and_counted():
    part = Part()
    before = time.time_ns() / 1000.0
    part.local.arrive(SENT, [torch.ones(2)])
    part.local.arrive(ROOTS, [torch.tensor(1.0)])
    after = time.time_ns() / 1000.0
    assert part.waves and part.local.waves == len(part.waves)
    assert sum(nodes for _, _, nodes, _ in part.waves) == len(part.local.graph)
    for began, ended, nodes, whole in part.waves:
        assert before <= began <= ended <= after and nodes > 0 and isinstance(whole, bool)


def test_without_retain_graph_the_graph_is_freed_and_without_create_graph_gradients_have_none():
    part = Part()
    part.local.arrive(SENT, [torch.ones(2, requires_grad=True)])  # with create_graph, x's gradient would need it
    part.local.arrive(ROOTS, [torch.tensor(1.0)])
    assert not part.grad().requires_grad
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        part.root.backward()


def test_with_retain_graph_and_create_graph_as_asked():
    part = Part(retain_graph=True, create_graph=True)
    part.local.arrive(SENT, [torch.ones(2, requires_grad=True)])
    part.local.arrive(ROOTS, [torch.tensor(1.0)])
    assert part.grad().requires_grad
    part.root.backward()  # the graph was kept


def _part(sources, keys):
    store, finished, sent = GradStore(), [], []
    local = LocalPass(PassGraph(sources), keys, store, send=lambda grads, last: sent.append((grads, last)),
                      finish=finished.append)
    return local, store, finished, sent


def test_the_root_and_a_send_point_delivering_into_one_node_both_count():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    total = (x * 3).sum()  # the tensor that was sent is the root itself
    edge = get_gradient_edge(total)
    local, store, finished, _ = _part({ROOTS: [edge], SENT: [edge]}, {SENT: order.place([edge.node])})
    local.arrive(SENT, [torch.tensor(0.5)])
    local.arrive(ROOTS, [torch.tensor(1.0)])
    assert torch.equal(store.snapshot()[x], torch.tensor([4.5, 4.5])) and finished == [None]


def test_leaves_reached_count_across_waves():
    x, z = torch.tensor([1.0], requires_grad=True), torch.tensor([2.0], requires_grad=True)
    sent = x * 3 + z * 5  # z is reached from the send point alone: its wave runs first
    root = (x * x).sum()
    edges = {ROOTS: [get_gradient_edge(root)], SENT: [get_gradient_edge(sent)]}
    local, store, finished, _ = _part(edges, {SENT: order.place([edges[SENT][0].node])})
    local.arrive(SENT, [torch.ones(1)])
    assert torch.equal(store.snapshot()[z], torch.tensor([5.0])) and x not in store.snapshot()
    local.arrive(ROOTS, [torch.tensor(1.0)])
    assert torch.equal(store.snapshot()[x], torch.tensor([5.0])) and finished == [None]
    assert local.leaves_reached == 2 and local.waves >= 2
