"""One node run alone (execution.run_node): a leaf accumulating, or handing its gradient back, as torch does."""

import pytest
import torch
from torch.autograd.graph import get_gradient_edge

from distautograd.engine import execution
from distautograd.engine.slots import Captured, GradStore

pytestmark = pytest.mark.usefixtures("path")  # tests/unit/conftest.py: every test on both paths


def leaf_and_edge():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    edge = get_gradient_edge(x)
    return x, edge


@pytest.mark.parametrize("create_graph", [False, True])
def test_a_leaf_run_alone_sums_what_reached_it_into_the_store(create_graph):
    x, edge = leaf_and_edge()
    store = GradStore()
    first = torch.tensor([0.5, 0.25], requires_grad=create_graph)
    second = torch.tensor([1.0, 1.0], requires_grad=create_graph)
    produced, got = execution.run_node(edge.node, [(edge, first), (edge, second)], store, False, create_graph)
    assert produced is None and got == {}
    assert torch.equal(store.snapshot()[x].detach(), torch.tensor([1.5, 1.25])) and x.grad is None
    assert store.snapshot()[x].requires_grad == create_graph


@pytest.mark.parametrize("create_graph", [False, True])
def test_a_leaf_run_alone_hands_its_gradient_back_when_captured(create_graph):
    x, edge = leaf_and_edge()
    store = Captured()
    grad = torch.tensor([3.0, 4.0], requires_grad=create_graph)
    produced, got = execution.run_node(edge.node, [(edge, grad), (edge, grad)], store, False, create_graph)
    assert produced is None and got == {}
    assert list(store.grads) == [edge.node] and x.grad is None
    assert torch.equal(store.grads[edge.node].detach(), torch.tensor([6.0, 8.0]))
    assert store.grads[edge.node].requires_grad == create_graph


def test_an_inner_node_run_alone_gives_what_it_produced_for_each_child_and_runs_no_child():
    x, _ = leaf_and_edge()
    y = x * 3
    z = y.sin()
    produced, got = execution.run_node(z.grad_fn, [(get_gradient_edge(z), torch.ones(2))], GradStore(), True, False)
    assert got == {} and len(produced) == 1
    assert torch.equal(produced[0], y.detach().cos())
    assert x.grad is None  # the child (and the leaf below it) did not run
