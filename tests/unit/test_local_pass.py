"""One worker's part of a pass, driven directly: arrivals, duplicates, closing, and what it reports.

One worker here: ``x`` is a leaf; the roots reach it through ``(x * 2).sum()`` and a send point
reaches it through ``x * 3`` (the tensor that "went" to another worker, whose gradient comes back).
Every test runs on both paths: on the native one, the part is the core's (native/csrc/local_pass.cpp)
wherever it can run it, which ``_start`` checks, so both implementations meet the same tests.
"""

import gc
import re
import threading
import time
import types
import warnings
import weakref

import pytest
import torch
from torch.autograd.graph import GradientEdge, get_gradient_edge

from distautograd import native
from distautograd.engine import order
from distautograd.engine.graph import ROOTS
from distautograd.engine.local_pass import LocalPass, UnknownSource, start
from distautograd.engine.nodes import RecvRpc, make_recv
from distautograd.engine.slots import GradStore

pytestmark = pytest.mark.usefixtures("path")  # tests/unit/conftest.py: every test on both paths

SENT = 7  # the send point's message id


def _start(sources, keys, store, **options):
    """local_pass.start, checked to give the core's part on the native path unless a graph is made."""
    local = start(sources, keys, store, **options)
    native_part = native.path_on() and not options.get("create_graph")
    assert isinstance(local, native.core.LocalPass if native_part else LocalPass), type(local)
    return local


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
        self.local = _start(edges, keys, self.store, send=lambda grads, last: None,
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


@pytest.mark.parametrize("key", [2**64 + SENT, -1, str(SENT), 1.5, ROOTS])
def test_what_is_no_source_of_the_part_is_refused_as_unknown_whatever_it_is(key):
    """Not an id of 64 bits, not an int, or the roots at a part that has none."""
    x = torch.tensor([1.0], requires_grad=True)
    edge = get_gradient_edge(x * 3)
    local, _, finished, _ = _part({SENT: [edge]}, {SENT: order.place([edge.node])})
    with pytest.raises(UnknownSource, match=re.escape(f"gradient arrived for send point {key}, which takes no part")):
        local.arrive(key, [torch.ones(1)])
    local.arrive(SENT, [torch.ones(1)])
    assert finished == [None]


def test_every_wave_is_observed_in_microseconds_and_counted():
    part = Part()
    before = time.time_ns() / 1000.0
    part.local.arrive(SENT, [torch.ones(2)])
    part.local.arrive(ROOTS, [torch.tensor(1.0)])
    after = time.time_ns() / 1000.0
    assert part.waves and part.local.waves == len(part.waves)
    assert sum(nodes for _, _, nodes, _ in part.waves) == len(part.local.order)
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
    local = _start(sources, keys, store, send=lambda grads, last: sent.append((grads, last)),
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


# ---------------------------------------------------------------- the order gradients are summed in
# In float32, 1e8 + 1 == 1e8: three gradients 1e8, 1 and -1e8 sum to 0 or to 1 depending on order.

BIG = 1e8


def test_gradients_from_three_send_points_are_summed_latest_sent_first():
    x = torch.tensor([1.0], requires_grad=True)
    y = x * 1.0  # sent three times; each send point's gradient comes back
    edge = get_gradient_edge(y)
    keys = {1: order.place([edge.node]), 2: order.seal() + 1, 3: order.seal() + 2}  # sent in this order
    local, store, finished, _ = _part({1: [edge], 2: [edge], 3: [edge]}, keys)
    for key, grad in ((1, 1.0), (2, BIG), (3, -BIG)):
        local.arrive(key, [torch.tensor([grad])])
    assert finished == [None]
    latest_first = (torch.tensor([-BIG]) + torch.tensor([BIG])) + torch.tensor([1.0])
    assert torch.equal(store.snapshot()[x], latest_first) and latest_first.item() == 1.0  # earliest first: 0


def test_where_a_wave_would_sum_in_another_order_than_local_autograd_it_runs_node_by_node():
    """v is sent (its gradient comes back first), then used by p1 and p2, made later. Local autograd
    sums v's gradient latest-created first: p2's (1e8), p1's (1), the send point's (-1e8): 0. One
    engine call over the wave would start from the early gradient: (-1e8 + 1e8) + 1 = 1."""
    def run():
        x = torch.tensor([1.0], requires_grad=True)
        v = x * 1.0
        key = order.place([v.grad_fn])  # v is sent now, before p1 and p2 exist
        p1, p2 = v * 1.0, v * BIG
        root = (p1 + p2).sum()
        order.place([root.grad_fn])
        return x, v, key, root

    x, v, key, root = run()
    edges = {ROOTS: [get_gradient_edge(root)], SENT: [get_gradient_edge(v)]}
    waves, store = [], GradStore()
    local = _start(edges, {SENT: key}, store, send=lambda grads, last: None,
                   finish=lambda error: None, observe=lambda began, ended, nodes, whole: waves.append(whole))
    local.arrive(SENT, [torch.tensor([-BIG])])
    local.arrive(ROOTS, [torch.tensor(1.0)])
    assert local.done and False in waves
    assert torch.equal(store.snapshot()[x], torch.tensor([0.0]))
    x2 = x.detach().requires_grad_()  # the oracle: the same graph in one process, the send a third use
    v2 = x2 * 1.0
    sent = v2 * 1.0
    p1, p2 = v2 * 1.0, v2 * BIG
    torch.autograd.backward([(p1 + p2).sum(), sent], [torch.tensor(1.0), torch.tensor([-BIG])])
    assert torch.equal(x2.grad, torch.tensor([0.0]))


def test_with_fewer_than_three_gradients_meeting_or_the_early_one_latest_the_wave_runs_whole():
    for late_send in (False, True):
        x = torch.tensor([1.0], requires_grad=True)
        v = x * 1.0
        key = order.place([v.grad_fn])
        p1 = v * 2.0
        uses = p1 if not late_send else p1 + v * 3.0
        root = uses.sum()
        if late_send:
            key = order.place([root.grad_fn])  # sent after p1 and the other use were made
        else:
            order.place([root.grad_fn])
        edges = {ROOTS: [get_gradient_edge(root)], SENT: [get_gradient_edge(v)]}
        waves, store = [], GradStore()
        local = _start(edges, {SENT: key}, store, send=lambda grads, last: None,
                       finish=lambda error: None, observe=lambda began, ended, nodes, whole: waves.append(whole))
        local.arrive(SENT, [torch.tensor([1.0])])
        local.arrive(ROOTS, [torch.tensor(1.0)])
        assert waves == [True], (late_send, waves)
        assert torch.equal(store.snapshot()[x], torch.tensor([6.0 if late_send else 3.0]))


# ---------------------------------------------------------------- finishing once, failing, closing

def test_a_part_with_nothing_to_run_finishes_once_whatever_arrives_after():
    root = torch.tensor(1.0, requires_grad=True)  # a leaf root on another worker's part: nothing here
    local, store, finished, sent = _part({ROOTS: []}, {})
    local.start_if_empty()
    local.arrive(ROOTS, [])
    assert finished == [None] and sent == [] and local.waves == 0 and root.grad is None


def test_a_send_point_that_reaches_nothing_here_arriving_after_the_end_changes_nothing():
    """A send point of a tensor without a graph here (its edge has no node) is no source any node
    waits for: the part ends without it, and its gradient arriving later finds the part closed."""
    x = torch.tensor([1.0], requires_grad=True)
    root = (x * 2).sum()
    edges = {ROOTS: [get_gradient_edge(root)], SENT: [GradientEdge(None, 0)]}
    local, store, finished, sent = _part(edges, {SENT: order.place([root.grad_fn])})
    local.arrive(ROOTS, [torch.tensor(1.0)])
    assert finished == [None]
    local.arrive(SENT, [torch.ones(1)])
    assert finished == [None] and local.waves == 1 and torch.equal(store.snapshot()[x], torch.tensor([2.0]))


def _two_branches():
    """A part of two independent branches: the send point's (``branch``, x * 2) and the roots'
    (``root``, accumulating into ``y``); hooks on them make a wave fail or wait."""
    x, y = torch.tensor([1.0], requires_grad=True), torch.tensor([1.0], requires_grad=True)
    branch = x * 2
    root = (y * 3).sum()
    edges = {ROOTS: [get_gradient_edge(root)], SENT: [get_gradient_edge(branch)]}
    keys = {SENT: order.place([branch.grad_fn, root.grad_fn])}
    local, store, finished, _ = _part(edges, keys)
    return local, store, finished, branch, root, y


def test_a_wave_that_fails_finishes_the_part_with_its_error_and_nothing_runs_after():
    local, store, finished, failing, _, y = _two_branches()

    def boom(grad):
        raise RuntimeError("boom")

    failing.register_hook(boom)
    local.arrive(SENT, [torch.ones(1)])
    assert len(finished) == 1 and "boom" in str(finished[0])
    local.arrive(ROOTS, [torch.tensor(1.0)])
    assert len(finished) == 1 and y not in store.snapshot()  # closed by the failure: the roots' branch never ran


def test_a_wave_that_fails_after_the_part_was_closed_reports_nothing():
    local, store, finished, failing, _, y = _two_branches()

    def closed_then_boom(grad):
        local.close()  # the pass was aborted meanwhile
        raise RuntimeError("boom")

    failing.register_hook(closed_then_boom)
    local.arrive(SENT, [torch.ones(1)])
    assert finished == []


def test_an_arrival_while_another_thread_runs_a_wave_is_run_by_that_thread():
    local, store, finished, slow, root, y = _two_branches()
    inside, go_on, ran_on = threading.Event(), threading.Event(), {}

    def hold(grad):
        inside.set()
        assert go_on.wait(10)

    slow.register_hook(hold)
    root.register_hook(lambda grad: ran_on.update(roots=threading.current_thread()))
    first = threading.Thread(target=local.arrive, args=(SENT, [torch.ones(1)]))
    first.start()
    try:
        assert inside.wait(10)
        local.arrive(ROOTS, [torch.tensor(1.0)])  # returns at once: the first thread drains it
        assert "roots" not in ran_on and finished == []
    finally:
        go_on.set()
        first.join(10)
    assert ran_on["roots"] is first and finished == [None]
    assert torch.equal(store.snapshot()[y], torch.tensor([3.0]))


# ---------------------------------------------------------------- node by node: recv points, leaves

def test_no_leaf_counts_as_reached_when_no_gradient_flowed():
    part = Part()
    part.local.arrive(SENT, [None])
    part.local.arrive(ROOTS, [None])
    assert part.finished == [None] and part.local.leaves_reached == 0 and part.grad() is None


def _point(message_id):
    """A recv point as contexts.py makes one: its message id, and the edge of its node's anchor."""
    point = types.SimpleNamespace(message_id=message_id)
    (point.tensor,), point.anchor = make_recv([torch.tensor([2.0])], [point])
    return point


def test_a_part_that_holds_a_python_recv_node_is_run_by_local_pass_on_either_path():
    """The core's part cannot run the Python recv node (a wave would fail on it), so where one is in
    the graph the part is LocalPass, which sends the recv point's gradient as it does on its own path."""
    point, anchor = types.SimpleNamespace(message_id=41), torch.empty(0, requires_grad=True)
    (r,) = RecvRpc.apply(anchor, [[torch.tensor([2.0])], [point]])  # as make_recv makes it on the Python path
    point.anchor = get_gradient_edge(anchor)
    order.place([r.grad_fn])
    root = (r * 5).sum()
    sent, finished = [], []
    local = start({ROOTS: [get_gradient_edge(root)]}, {}, GradStore(), send=lambda grads, last: sent.append(grads),
                  finish=finished.append)
    assert type(local) is LocalPass
    local.arrive(ROOTS, [torch.tensor(1.0)])
    assert list(sent[0]) == [41] and torch.equal(sent[0][41], torch.tensor([5.0])) and finished == [None]


def test_a_node_by_node_wave_tells_a_recv_point_that_got_nothing_and_runs_the_rest():
    """The send point delivers into x * 3 (x also waits for the roots: node by node), with no
    gradient into r * 5, r being what came from another worker (recv point 41), and with one into
    q * 9 (recv point 42) and into the leaves z and w."""
    x, z, w = (torch.tensor([1.0], requires_grad=True) for _ in range(3))
    r, q = _point(41).tensor, _point(42).tensor
    uses = [r * 5, x * 3, z * 7, w * 11, q * 9]
    root = (x * 2).sum()
    edges = {ROOTS: [get_gradient_edge(root)], SENT: [get_gradient_edge(use) for use in uses]}
    keys = {SENT: order.place([use.grad_fn for use in uses] + [root.grad_fn])}
    local, store, finished, sent = _part(edges, keys)
    local.arrive(SENT, [None] + [torch.ones(1)] * 4)
    assert ({41: None}, False) in sent  # the worker r came from is told: no gradient for it
    (got,) = [grads for grads, _ in sent if 42 in grads]
    assert torch.equal(got[42], torch.tensor([9.0]))
    assert all(last is False for _, last in sent)  # node by node, the part is never sure it is its last
    assert torch.equal(store.snapshot()[z], torch.tensor([7.0])) and torch.equal(store.snapshot()[w], torch.tensor([11.0]))
    assert local.leaves_reached == 2
    local.arrive(ROOTS, [torch.tensor(1.0)])
    assert finished == [None] and torch.equal(store.snapshot()[x], torch.tensor([5.0]))


def test_only_the_push_of_the_last_wave_says_nothing_more_runs_here():
    r, q = _point(41).tensor, _point(42).tensor
    root = (q * 2).sum()
    edges = {ROOTS: [get_gradient_edge(root)], SENT: [get_gradient_edge(r * 5)]}
    local, store, finished, sent = _part(edges, {SENT: order.place([edges[SENT][0].node, root.grad_fn])})
    local.arrive(SENT, [torch.ones(1)])
    local.arrive(ROOTS, [torch.tensor(1.0)])
    assert [(sorted(grads), last) for grads, last in sent] == [([41], False), ([42], True)]
    assert torch.equal(sent[0][0][41], torch.tensor([5.0])) and torch.equal(sent[1][0][42], torch.tensor([2.0]))
    assert finished == [None]


def test_a_part_closed_while_a_node_runs_runs_no_more_nodes_of_its_wave():
    """A node-by-node wave as two tests above (x waits for the roots); the first node to run, q * 9
    (the latest made), finds the pass aborted: nothing after it runs, nothing is sent or reported."""
    x, z = (torch.tensor([1.0], requires_grad=True) for _ in range(2))
    r, q = _point(41).tensor, _point(42).tensor
    uses = [r * 5, x * 3, z * 7, q * 9]
    root = (x * 2).sum()
    edges = {ROOTS: [get_gradient_edge(root)], SENT: [get_gradient_edge(use) for use in uses]}
    keys = {SENT: order.place([use.grad_fn for use in uses] + [root.grad_fn])}
    local, store, finished, sent = _part(edges, keys)
    ran = []
    uses[3].register_hook(lambda grad: (ran.append("q * 9"), local.close()) and None)
    uses[2].register_hook(lambda grad: ran.append("z * 7"))
    local.arrive(SENT, [torch.ones(1)] * 4)
    assert ran == ["q * 9"] and sent == [] and finished == [] and z not in store.snapshot()


def test_a_warning_torch_raises_in_a_wave_is_a_python_warning_and_under_w_error_fails_the_part():
    def part():
        x = torch.tensor([1.0, 2.0], requires_grad=True)
        root = torch.ops.aten._test_warn_in_autograd(x * 1.0).sum()  # its backward warns in C++ (TORCH_WARN)
        return _part({ROOTS: [get_gradient_edge(root)]}, {})

    local, _, finished, _ = part()
    with pytest.warns(UserWarning, match="Warn from backward"):
        local.arrive(ROOTS, [torch.tensor(1.0)])
    assert finished == [None]
    local, store, finished, _ = part()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        local.arrive(ROOTS, [torch.tensor(1.0)])  # the part fails; arrive itself does not raise
    assert len(finished) == 1 and isinstance(finished[0], UserWarning) and "Warn from backward" in str(finished[0])


def test_a_part_whose_callbacks_hold_it_is_collected_once_nothing_else_does():
    """The runtime's callbacks close over the Part that holds the part: a cycle the garbage collector
    must be able to see through on both sides."""
    class Holder:
        pass

    x = torch.tensor([1.0], requires_grad=True)
    holder = Holder()
    holder.local = _start({ROOTS: [get_gradient_edge((x * 2).sum())]}, {}, GradStore(),
                          send=lambda grads, last, held=holder: None, finish=lambda error, held=holder: None)
    gone = weakref.ref(holder)
    del holder
    gc.collect()
    assert gone() is None
