"""The large-graph path of the backward protocol, run by real agents in one process: over
ACTIVATES_LIMIT send points the root asks their holders what each sets off (runtime/reach.py), and
over PLAN_INLINE_LIMIT the plan goes ahead of the gradients; gradients are still single-process
torch's, and a holder's wrong or missing answer fails the pass before it starts."""

from __future__ import annotations

import pytest
import torch

from distautograd import errors
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime import backward as backward_module, codec
from distautograd.runtime.reach import Reach
from tests.helpers.inprocess import AGENTS, World, backward, backward_in_thread, call, context, gradients
from tests.helpers.spies import Spy
from tests.inprocess.test_backward import (NAMES, chain, chain_sum, chain_sum_then_exp_on,
                                           sum_all_but_the_last_and_pass_it_on)


@pytest.fixture
def world():  # a world per test, as in test_backward.py
    world = World(NAMES, rpc_timeout=5)
    yield world
    world.close()


def big_graph_through(there, root="w0"):
    """ACTIVATES_LIMIT + 76 tensors summed on w1, then exp on ``there``: too many activations to travel,
    so the root must ask; the gradients are still single-process torch's."""
    xs = [torch.randn(2, dtype=torch.float64, requires_grad=True) for _ in range(codec.ACTIVATES_LIMIT + 76)]
    with context(root) as ctx:
        y = call(root, "w1", chain_sum_then_exp_on, xs, "w1", there)
        backward(root, ctx, [y.sum()])
        grads = gradients(root, ctx.id)
    xs2 = [x.detach().clone().requires_grad_() for x in xs]
    want = torch.autograd.grad(torch.exp(chain_sum(xs2)).sum(), xs2)
    assert all(torch.equal(grads[x], g) for x, g in zip(xs, want))


def test_a_big_graph_asks_the_holders_and_sends_the_plan_ahead(world, monkeypatch):
    count = codec.ACTIVATES_LIMIT + 76
    assert count > backward_module.PLAN_INLINE_LIMIT
    spy = Spy(monkeypatch)
    big_graph_through("w2")
    assert spy.asked == [(1, 1), (2, 1), (1, 1)], spy.asked
    plans = sorted(rank for who, rank, kind in spy.sent if who == "w0" and kind == "run_backward")
    assert plans == [1, 2], spy.sent
    pushes = [(who, kind) for who, _, kind in spy.sent if kind == "push_gradients"]
    assert pushes, "gradients were pushed"
    assert not any(spy.push_plans)  # the plan went ahead: the pushes leave it out


def test_a_big_graph_where_a_received_tensor_is_passed_on_as_it_came(world):
    """w1 passes on the last of the tensors it received (its recv node's last output) to w2: the
    gradients are still single-process torch's."""
    xs = [torch.randn(2, dtype=torch.float64, requires_grad=True) for _ in range(codec.ACTIVATES_LIMIT + 76)]
    with context("w0") as ctx:
        y = call("w0", "w1", sum_all_but_the_last_and_pass_it_on, xs, "w1", "w2")
        backward("w0", ctx, [y.sum()])
        grads = gradients("w0", ctx.id)
    xs2 = [x.detach().clone().requires_grad_() for x in xs]
    want = torch.autograd.grad((chain_sum(xs2[:-1]) + torch.exp(xs2[-1])).sum(), xs2)
    assert len(grads) == len(xs) and all(torch.equal(grads[x], g) for x, g in zip(xs, want))


def double_each(xs):
    return [x * 2 for x in xs]


def pass_the_second_on(a, b, here, there):
    """``b`` is the second tensor of the message (its recv node's output 1) and goes on as it came."""
    return a + call(here, there, torch.exp, b)


def test_a_received_tensor_whose_reach_is_unknown_passed_on_as_a_second_output(world, monkeypatch):
    """b sums more send points than an activation may carry, so w1 cannot say what the b it passes
    on reaches: the root asks w1 about that send point, whose edge is output 1 of w1's recv node,
    and w1 must answer for output 1 (b), not output 0 (a), or b's gradient never goes back."""
    spy = Spy(monkeypatch)
    xs = [torch.randn(2, dtype=torch.float64, requires_grad=True) for _ in range(codec.ACTIVATES_LIMIT + 76)]
    with context("w0") as ctx:
        b = chain_sum(call("w0", "w2", double_each, xs))
        y = call("w0", "w1", pass_the_second_on, xs[0] * 3, b, "w1", "w2")
        backward("w0", ctx, [y.sum()])
        grads = gradients("w0", ctx.id)
    assert (1, 1) in spy.asked, spy.asked  # the root did ask w1 about the send point that passes b on
    xs2 = [x.detach().clone().requires_grad_() for x in xs]
    want = torch.autograd.grad((xs2[0] * 3 + torch.exp(chain_sum([x * 2 for x in xs2]))).sum(), xs2)
    assert len(grads) == len(xs) and all(torch.equal(grads[x], g) for x, g in zip(xs, want))


def test_a_big_graph_driven_from_another_rank_than_0_names_its_root_in_every_message(world, monkeypatch):
    spy = Spy(monkeypatch)
    big_graph_through("w0", root="w2")  # the plan goes ahead to w0 and w1; their pushes must name w2
    assert sorted(rank for who, rank, kind in spy.sent if who == "w2" and kind == "run_backward") == [0, 1]
    assert spy.push_roots and set(spy.push_roots) == {2}


def test_a_big_graph_through_the_root_asks_the_root_itself_without_a_message(world, monkeypatch):
    """The same, with the hop back through w0: w0 answers its own question about its send point."""
    spy = Spy(monkeypatch)
    big_graph_through("w0")
    assert spy.asked == [(1, 1), (0, 1), (1, 1)], spy.asked
    assert not [s for s in spy.sent if s[0] == "w0" and s[1] == 0], "no message from w0 to itself"


def test_a_holder_that_cannot_answer_fails_the_pass_before_it_starts(world, monkeypatch):
    xs = [torch.randn(2, dtype=torch.float64, requires_grad=True) for _ in range(codec.ACTIVATES_LIMIT + 76)]
    with context("w0") as ctx:
        y = call("w0", "w1", chain_sum_then_exp_on, xs, "w1", "w2")
        AGENTS["w1"].contexts.release(ctx.id)  # w1 forgets its send points: it cannot say what they reach
        with pytest.raises(errors.FailedPrecondition, match=f"the backward pass of context {ctx.id} cannot start: .*no send "
                                                  "point") as raised:
            backward("w0", ctx, [y.sum()])
        assert raised.value.worker == "w1"


def test_a_holder_answers_a_reach_only_about_the_context_asked(world):
    x = torch.randn(3, requires_grad=True)
    with context("w0") as ctx:
        call("w0", "w1", torch.exp, x)  # w1 holds the send point of what it returns, in ctx
        (message_id,) = AGENTS["w1"].contexts._sends
        peers = AGENTS["w0"].peers
        ask = lambda context_id: peers.request(1, pb.Request(reach=pb.ReachRequest(context_id=context_id,
                                                                                   message_ids=[message_id])), timeout=5)
        (reach,) = ask(ctx.id).result()[0].reach.reaches
        assert reach.message_id == message_id
        with pytest.raises(errors.InvalidArgument, match=f"send point {message_id} belongs to context {ctx.id}, not "
                                                         f"to context {ctx.id + 1} the Reach asked about"):
            ask(ctx.id + 1).result()


def test_a_holder_that_answers_about_fewer_send_points_than_asked_fails_the_pass(world, monkeypatch):
    describe = Reach._describe_reach
    monkeypatch.setattr(Reach, "_describe_reach", lambda reach, context_id, ids: describe(reach, context_id, ids)[:-1])
    with pytest.raises(errors.Internal, match=r"cannot start: w1 answered a Reach about 0 send points, not the 1 "
                                              r"asked, in that order$"):
        big_graph_through("w2")


def test_a_small_graph_asks_nobody_and_the_plan_rides_on_the_pushes(world, monkeypatch):
    spy = Spy(monkeypatch)
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w1", chain, x, ["w1", "w2"])
        backward("w0", ctx, [y.sum()])
    assert spy.asked == [] and not [s for s in spy.sent if s[2] == "run_backward"], spy.sent
    assert not [s for s in spy.sent if s[2] == "pass_finished"], "every part ended with a push that said so"
    assert spy.push_plans and all(spy.push_plans)


def test_at_the_plan_limit_the_plan_still_rides_on_the_pushes_and_one_more_sends_it_ahead(world, monkeypatch):
    """PLAN_INLINE_LIMIT active send points: the plan travels with the pushes; one more: it goes
    ahead in RunBackward and the pushes leave it out. Either way every participant gets it."""
    counted = []
    active_sends = Reach.active_sends
    monkeypatch.setattr(Reach, "active_sends", lambda reach, ctx, edges: counted.append(
        len(found := active_sends(reach, ctx, edges))) or found)

    def a_pass(tensors):
        spy = Spy(monkeypatch)
        xs = [torch.randn(2, dtype=torch.float64, requires_grad=True) for _ in range(tensors)]
        with context("w0") as ctx:
            y = call("w0", "w1", chain_sum_then_exp_on, xs, "w1", "w2")
            backward("w0", ctx, [y.sum()])
            assert set(gradients("w0", ctx.id)) == set(xs)
        return spy, counted[-1]

    _, sends = a_pass(8)
    extra = sends - 8  # the send points the chain adds to the tensors'
    for more in (0, 1):
        spy, sends = a_pass(backward_module.PLAN_INLINE_LIMIT - extra + more)
        assert sends == backward_module.PLAN_INLINE_LIMIT + more
        ahead = [s for s in spy.sent if s[0] == "w0" and s[2] == "run_backward"]
        assert (bool(ahead), any(spy.push_plans)) == ((False, True) if not more else (True, False)), (more, ahead)


def test_a_holder_that_never_answers_the_reach_fails_the_pass_at_the_timeout(monkeypatch):
    """The root asks w1 what its send points set off, and w1 never answers: the pass fails with the
    rpc timeout's DeadlineExceeded (the question has the calls' timeout), instead of waiting forever."""
    from distautograd.transport.dispatch import Deferred

    monkeypatch.setattr(Reach, "handle_reach", lambda self, link, body, attachments: Deferred())
    world = World(NAMES, rpc_timeout=1)
    try:
        xs = [torch.randn(2, dtype=torch.float64, requires_grad=True) for _ in range(codec.ACTIVATES_LIMIT + 76)]
        with context("w0") as ctx:
            y = call("w0", "w1", chain_sum_then_exp_on, xs, "w1", "w2", timeout=30)
            thread, outcome = backward_in_thread("w0", ctx, [y.sum()])
            thread.join(10)
            assert not thread.is_alive(), "the pass waited on the holder's answer past the timeout"
        assert isinstance(outcome.get("error"), errors.DeadlineExceeded), outcome
        assert outcome["error"].worker == "w1"  # who did not answer
    finally:
        world.close()
