"""Recv points and gradient edges: the nodes a pass adds to torch's graph and how it finds edges.

Every test runs with both recv nodes: the core's C++ node (the native path) and the Python autograd.Function."""

import gc
import re
import sys
import threading
import types
import weakref

import pytest
import torch

from torch.autograd.graph import get_gradient_edge

from distautograd import native
from distautograd.engine import execution, nodes, order
from tests.helpers.paths import take_path

pytestmark = pytest.mark.usefixtures("path")  # tests/unit/conftest.py: every test on both paths


def point(message_id):
    return types.SimpleNamespace(message_id=message_id)


def test_each_path_makes_its_own_recv_node_and_both_are_recv_nodes(path):
    (x,), anchor = nodes.make_recv([torch.ones(2)], [point(1)])
    expected = nodes.NATIVE_RECV_NODE if path == "native" else nodes.RECV_NODE
    assert type(x.grad_fn) is expected and type(x.grad_fn) in nodes.RECV_TYPES
    assert type(x.grad_fn).__name__ == nodes.RECV_NAME
    assert x.grad_fn.next_functions[0] == (anchor.node, 0) and nodes.is_leaf(anchor.node)
    assert x.grad_fn._sequence_nr() >= order.BASE  # placed: it was made on this thread


def test_tensor_hooks_on_a_received_tensor_run_before_its_gradient_is_recorded():
    (x,), anchor = nodes.make_recv([torch.ones(2)], [point(3)])
    x.register_hook(lambda grad: grad * 10)
    with nodes.recording() as sink:
        torch.autograd.backward([(x * 2).sum()], inputs=[anchor])
    assert torch.equal(sink[3], torch.full((2,), 20.0))


def test_one_recording_collects_from_both_kinds_of_recv_node_in_one_graph(monkeypatch):
    if native.core is None:
        pytest.skip("the compiled core is not built")
    take_path(monkeypatch, "1")
    (a,), anchor_a = nodes.make_recv([torch.ones(2)], [point(1)])
    take_path(monkeypatch, "0")
    (b,), anchor_b = nodes.make_recv([torch.ones(2)], [point(2)])
    assert type(a.grad_fn) is not type(b.grad_fn)
    with nodes.recording() as sink:
        torch.autograd.backward([(a * 3 + b * 5).sum()], inputs=[anchor_a, anchor_b])
    assert torch.equal(sink[1], torch.full((2,), 3.0)) and torch.equal(sink[2], torch.full((2,), 5.0))


def test_a_weak_reference_to_a_recv_node_lets_it_go_with_its_graph():
    (x,), _ = nodes.make_recv([torch.ones(2)], [point(1)])
    ref = nodes.weak_ref(x.grad_fn)
    assert ref() is x.grad_fn and nodes.recv_points(ref()) == [point(1)]
    del x
    gc.collect()
    assert ref() is None


class Held:
    """A recv point as contexts keep one: it holds a weak handle to its own node."""

    def __init__(self, message_id):
        self.message_id = message_id
        self.node = None


def test_a_recv_node_and_its_points_go_with_the_graph_though_each_point_holds_a_weak_handle_to_it():
    held = Held(1)
    (x,), anchor = nodes.make_recv([torch.ones(2)], [held])
    held.node = nodes.weak_ref(x.grad_fn)
    with nodes.recording():
        torch.autograd.backward([(x * 2).sum()], inputs=[anchor])
    gone = weakref.ref(held)
    del held, x, anchor
    gc.collect()
    assert gone() is None  # a node that kept its points until its weak handles went would keep both forever


def test_a_recv_node_lets_its_points_go_when_it_goes_on_another_thread():
    held = point(1)
    alone = sys.getrefcount(held)
    (x,), _ = nodes.make_recv([torch.ones(2)], [held])
    assert sys.getrefcount(held) == alone + 1  # the node's list of points
    box = [x]
    del x
    thread = threading.Thread(target=box.clear)  # the last reference to the graph goes on that thread
    thread.start()
    thread.join(10)
    assert sys.getrefcount(held) == alone


def test_a_recv_node_hands_each_outputs_gradient_to_its_point_and_none_stays_none():
    a, b = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    (x, y), anchor = nodes.make_recv([a.detach(), b.detach()], [point(1), point(2)])
    assert nodes.recv_points(x.grad_fn) == [point(1), point(2)] and nodes.recv_points(anchor.node) is None
    assert x.grad_fn.name() == nodes.RECV_NAME
    with nodes.recording() as sink:
        torch.autograd.backward([(x * 2).sum()], inputs=[anchor])
    assert torch.equal(sink[1], torch.full((2,), 2.0))
    assert sink[2] is None  # y took no part: no zeros are made up for it


def test_one_received_tensor_is_still_a_tuple_of_outputs():
    (x,), anchor = nodes.make_recv([torch.ones(2)], [point(5)])
    assert x.requires_grad and anchor.node is not None


def test_received_views_come_out_detached_so_they_can_be_modified_in_place():
    base = torch.arange(6.0)
    (x,), _ = nodes.make_recv([base[2:4]], [point(1)])
    x.mul_(2)  # a custom Function's view output would refuse this
    assert base.tolist() == [0, 1, 4, 6, 4, 5]


def test_a_local_backward_through_a_recv_point_says_what_to_call():
    (x,), _ = nodes.make_recv([torch.ones(2)], [point(1)])
    with pytest.raises(RuntimeError, match=re.escape(nodes.LOCAL_BACKWARD_ERROR)):
        x.sum().backward()
    assert "distautograd.autograd.backward(context_id, roots)" in nodes.LOCAL_BACKWARD_ERROR


def test_recordings_nest_and_the_outer_one_is_back_after_the_inner():
    with nodes.recording() as outer:
        with nodes.recording() as inner:
            assert inner is not outer
        (x,), anchor = nodes.make_recv([torch.ones(1)], [point(9)])
        torch.autograd.backward([x.sum()], inputs=[anchor])
    assert 9 in outer and 9 not in inner


@pytest.mark.parametrize("layout", [torch.strided, torch.sparse_coo])
def test_the_gradient_edge_of_a_tensor_is_where_its_gradient_enters(layout):
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    tensor = (w * 3).to_sparse() if layout == torch.sparse_coo else w * 3
    edge = nodes.gradient_edge(tensor)
    assert edge.node is tensor.grad_fn and edge.output_nr == 0
    grad = torch.ones(2, 2).to_sparse() if layout == torch.sparse_coo else torch.ones(2, 2)
    (got,) = execution._run_engine([edge], [grad], False, False, [get_gradient_edge(w)], accumulate=False)
    assert torch.equal(got, torch.full((2, 2), 3.0))
