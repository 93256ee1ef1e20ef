"""Each fast path, forced, and its fallback, against the session cluster's real processes.

- A call runs on the thread that read it; when no such thread may take it, on the pool.
- A call that waits gives its connection's reading away: at once when it waits on the runtime
  (a nested call back over the same connection), through the watchdog when it waits on
  anything else.
- A participant's end rides on its last push; one whose part ends without a push sends PassFinished.
- A wrong gradient from a peer still fails the pass with torch's message (the engine checks it).
- A value's tensors (a call's arguments, its answer) are made by the core in one call, Parameters and
  all; a value with a tensor it does not take (sparse) is made by Python.
- What a send point sets off travels with its tensor; over 1024 send points it does not, and the
  root asks their holders. A plan of up to 512 active sends rides on every push; a bigger one is
  sent to every participant first.
"""

import pytest
import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc
from distautograd.runtime import backward as backward_module
from distautograd.runtime import codec, current
from tests.helpers import remote
from tests.helpers.spies import Spy

pytestmark = pytest.mark.usefixtures("trainer")


def test_a_call_runs_on_the_thread_that_read_it():
    assert rpc.rpc_sync("worker1", remote.thread_name).startswith("distautograd-recv")


def test_calls_beyond_the_inline_limit_run_on_the_pool():
    names = [rpc.rpc_async("worker2", remote.sleep, args=(0.3,)) for _ in range(20)]  # fill the inline slots
    late = [rpc.rpc_async("worker2", remote.thread_name) for _ in range(8)]
    assert all(f.wait() == 0.3 for f in names)
    assert any(f.wait().startswith("distautograd-call") for f in late)


def test_a_call_that_calls_back_over_the_same_connection_gives_reading_away():
    me = rpc.get_worker_info().name
    assert rpc.rpc_sync("worker1", remote.call_back, args=(me, remote.add, (2, 3))) == 5
    assert rpc.rpc_sync("worker1", remote.nested_add, args=("worker1", 1, 1)) == 2  # to itself, nested


def test_a_call_blocked_on_something_else_is_freed_by_the_watchdog():
    """The first call waits for an Event the second sets: the second must be read meanwhile."""
    waiting = rpc.rpc_async("worker3", remote.wait_for_event, args=("fast-path-watchdog", 20))
    rpc.rpc_sync("worker3", remote.set_event, args=("fast-path-watchdog",), timeout=10)
    assert waiting.wait() is True


class Count:
    """Counts the PassFinished messages this process (the root) gets."""

    def __init__(self, monkeypatch):
        self.finished = 0
        handlers = current.get().dispatcher._handlers
        original, inline = handlers["pass_finished"]

        def counting(*args):
            self.finished += 1
            return original(*args)

        monkeypatch.setitem(handlers, "pass_finished", (counting, inline))


def test_a_part_that_ends_with_a_push_says_so_on_it(monkeypatch):
    count = Count(monkeypatch)
    w = torch.randn(4, requires_grad=True)
    with dist_autograd.context() as context_id:
        y = rpc.rpc_sync("worker1", torch.exp, args=(w,))
        z = rpc.rpc_sync("worker2", torch.sin, args=(y,))
        dist_autograd.backward(context_id, [z.sum()])
        grad = dist_autograd.get_gradients(context_id)[w]
    assert torch.equal(grad, torch.autograd.grad(torch.sin(torch.exp(w)).sum(), w)[0])
    assert count.finished == 0, "every part ended with a push: no PassFinished should have come"


def test_a_part_that_ends_without_a_push_sends_pass_finished(monkeypatch):
    count = Count(monkeypatch)
    x = torch.ones(8, requires_grad=True)
    with dist_autograd.context() as context_id:
        loss = rpc.rpc_sync("worker1", remote.ps_forward_constant, args=(x,))  # ends at worker1's own leaf
        dist_autograd.backward(context_id, [loss * 1])
        assert torch.equal(rpc.rpc_sync("worker1", remote.ps_weight_grad, args=(context_id,)), x.detach())
    assert count.finished == 1


def test_a_wrong_gradient_from_a_peer_fails_the_pass_with_torchs_message(monkeypatch):
    """The engine is called without torch's Python checks: its own check of each gradient still holds."""
    from distautograd.runtime.push_sending import PushSending

    original = PushSending.push

    def corrupt(pushes, part, grads, last=False):
        return original(pushes, part, {m: torch.ones(7) for m in grads}, last)

    w = torch.randn(3, requires_grad=True)
    with dist_autograd.context() as context_id:
        y = rpc.rpc_sync("worker1", torch.exp, args=(w,))
        monkeypatch.setattr(PushSending, "push", corrupt)  # this process sends a wrong shape
        with pytest.raises(RuntimeError, match=r"invalid gradient at index 0 - got \[7\] but expected shape "
                                               r"compatible with \[3\]"):
            dist_autograd.backward(context_id, [y.sum()])


def test_a_list_of_tensors_travels_without_a_pickle_and_anything_else_with_one(monkeypatch):
    """worker1 answers with the list it got: its answer is unpickled here only when it must be."""
    from distautograd.encoding import pickling

    unpickled = []
    original = pickling.loads
    monkeypatch.setattr(pickling, "loads", lambda data, *a: unpickled.append(1) or original(data, *a))
    a, b = torch.arange(3.0), torch.ones(2, 2, dtype=torch.float64)
    back = rpc.rpc_sync("worker1", remote.echo, args=([a, None, b],))
    assert back[1] is None and torch.equal(back[0], a) and torch.equal(back[2], b)
    assert unpickled == []
    same = rpc.rpc_sync("worker1", remote.echo, args=([a, a],))
    assert same[0] is same[1]  # the same tensor twice takes the pickle, which keeps it one object
    assert unpickled == [1]


def test_a_values_tensors_are_made_by_the_core_and_a_sparse_ones_by_python(monkeypatch):
    """worker1 answers with the tuple it got: its tensors are made here by the core, one Python
    tensors.decode per tensor only where one of them is not plain dense (or on the Python path)."""
    from distautograd import native
    from distautograd.encoding import tensors

    made_by_python = []
    original = tensors.decode
    monkeypatch.setattr(tensors, "decode", lambda *a, **k: made_by_python.append(1) or original(*a, **k))
    a, p = torch.arange(3.0), torch.nn.Parameter(torch.randn(2, 2))
    back = rpc.rpc_sync("worker1", remote.echo, args=((a, p, {"again": a}),))
    assert torch.equal(back[0], a) and back[2]["again"] is back[0]
    assert type(back[1]) is torch.nn.Parameter and back[1].requires_grad and torch.equal(back[1], p)
    assert len(made_by_python) == (0 if native.path_on() else 2)
    made_by_python.clear()
    sparse = torch.ones(3).to_sparse()
    back = rpc.rpc_sync("worker1", remote.echo, args=((a, sparse),))
    assert torch.equal(back[0], a) and torch.equal(back[1].to_dense(), sparse.to_dense())
    assert len(made_by_python) == 4  # the dense one too (the value is Python's whole), and the sparse one's 2 parts


def test_a_big_graph_the_root_asks_the_holders_and_sends_the_plan_ahead(monkeypatch):
    """1100 send points into worker1's sum: what its result sets off is too big to travel, so the trainer
    asks worker1, worker2 and worker1 again, hop by hop; 1103 active sends make a plan too big to ride on
    pushes, so worker1 and worker2 get it first. The gradients are still single-process torch's."""
    count = len(range(codec.ACTIVATES_LIMIT + 76))
    assert count > codec.ACTIVATES_LIMIT and count > backward_module.PLAN_INLINE_LIMIT
    xs = [torch.randn(2, requires_grad=True) for _ in range(count)]
    spy = Spy(monkeypatch)
    with dist_autograd.context() as context_id:
        y = rpc.rpc_sync("worker1", remote.chain_sum_then_exp_on, args=(xs, "worker2"))
        dist_autograd.backward(context_id, [y.sum()])
        grads = dist_autograd.get_gradients(context_id)
    want = torch.autograd.grad(torch.exp(remote.chain_sum(xs)).sum(), xs)
    assert all(torch.equal(grads[x], g) for x, g in zip(xs, want))
    worker1, worker2 = (rpc.get_worker_info(n).id for n in ("worker1", "worker2"))
    assert spy.asked == [(worker1, 1), (worker2, 1), (worker1, 1)], spy.asked
    plans = sorted(rank for _, rank, kind in spy.sent if kind == "run_backward")
    assert plans == sorted([worker1, worker2]), spy.sent


def test_a_small_graph_asks_nobody_and_its_plan_rides_on_the_pushes(monkeypatch):
    """The fast path of the test above: a chain through worker1 and worker2 (nested), every activation
    travelled along; no Reach, no RunBackward."""
    w = torch.randn(3, requires_grad=True)
    spy = Spy(monkeypatch)
    with dist_autograd.context() as context_id:
        y = rpc.rpc_sync("worker1", remote.nested_add, args=("worker2", w, 1))
        dist_autograd.backward(context_id, [y.sum()])
        assert torch.equal(dist_autograd.get_gradients(context_id)[w], torch.ones(3))
    assert spy.asked == [] and not [kind for _, _, kind in spy.sent if kind == "run_backward"], spy.sent
