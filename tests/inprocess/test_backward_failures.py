"""A pass that cannot finish fails, naming who: by the timeout when a worker's backward is slow, at
once when a participant leaves. Each test has a world of its own (one world alive at a time)."""

from __future__ import annotations

import logging
import re
import signal
import threading
import time

import pytest
import torch

from distautograd import errors
from distautograd.runtime.pass_failures import PassFailures
from distautograd.runtime.pass_state import Drive
from tests.helpers.inprocess import AGENTS, World, backward, backward_in_thread, call, context, gradients
from tests.helpers.spies import Spy
from tests.inprocess.test_backward import fails_in_backward


STARTED = threading.Event()  # set by every SlowInBackward node as it begins: a part certainly running


class SlowInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, seconds):
        ctx.seconds = seconds
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        STARTED.set()
        time.sleep(ctx.seconds)
        return grad, None


def slow_in_backward(x, seconds=1.5):
    return SlowInBackward.apply(x, seconds)


def test_a_slow_backward_fails_by_the_timeout_naming_who_is_late():
    names = ["s0", "s1"]
    world = World(names, rpc_timeout=0.5)
    try:
        x = torch.randn(3, requires_grad=True)
        with context("s0") as ctx:
            y = call("s0", "s1", slow_in_backward, x)
            began = time.monotonic()
            with pytest.raises(errors.DeadlineExceeded, match=r"did not finish within 0.5 s; still waiting for "
                                                              r"'s0' \(rank 0\), 's1' \(rank 1\)$"):
                backward("s0", ctx, [y.sum()])
            assert 0.4 < time.monotonic() - began < 1.4
    finally:
        world.close()


def test_a_participant_that_leaves_mid_pass_fails_it_naming_the_worker():
    names = ["d0", "d1", "d2"]
    world = World(names, rpc_timeout=30)
    try:
        x = torch.randn(3, requires_grad=True)
        with context("d0") as ctx:
            y = call("d0", "d2", slow_in_backward, x)
            threading.Timer(0.3, lambda: AGENTS["d2"].stop(graceful=False)).start()
            began = time.monotonic()
            # Whichever comes first: the connection closed by d2's kernel, or the coordinator's notice.
            with pytest.raises(errors.Unavailable, match=r"lost 'd2' \(rank 2\)|worker 'd2' \(rank 2\) (died|left) "
                                                         r"during the backward"):
                backward("d0", ctx, [y.sum()])
            assert time.monotonic() - began < 1.4
    finally:
        world.close()


# ---------------------------------------------------------------- a failure stops every part; exact messages

WEIGHT = torch.ones(3, 3, requires_grad=True)  # the parameter of the slow part


def slow_with_a_parameter(x):
    """A part whose only way out is a leaf (x needs no gradient): it reports by PassFinished."""
    return SlowInBackward.apply(x @ WEIGHT, 1.5)


def test_a_part_that_fails_stops_the_others_at_once_and_the_error_names_it_exactly(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="distautograd")
    spy = Spy(monkeypatch)
    names = ["f0", "f1", "f2"]
    world = World(names, rpc_timeout=30)
    try:
        x = torch.randn(3, requires_grad=True)
        with context("f0") as ctx:
            a = call("f0", "f1", slow_with_a_parameter, torch.ones(3))
            b = call("f0", "f2", fails_in_backward, x)
            with pytest.raises(RuntimeError) as raised:
                backward("f0", ctx, [a.sum() + b.sum()])
            failed_at = time.monotonic()
            message = str(raised.value)
            assert message.startswith(
                "Error on Node 2: Simulate error on backward pass\n\nValueError raised on worker 'f2' (rank 2) "
                f"during the backward pass of context {ctx.id}; worker 'f2'; remote traceback:\nTraceback")
            assert message.count("Raised on") == 0 and message.endswith("ValueError: Simulate error on backward pass")
            assert isinstance(raised.value.__cause__, ValueError)
            logged = [r.getMessage() for r in caplog.records if "failed on" in r.getMessage()]
            assert any(re.fullmatch(rf"backward pass \d+ of context {ctx.id} failed on f2: Simulate error on backward "
                                    r"pass(?s:.*)", m) for m in logged), logged  # the operator's line, on f2
            # f1 is still inside its slow node (1.5 s): the root's abort ended its part all the same
            while AGENTS["f1"].backward.in_flight() and time.monotonic() - failed_at < 5:
                time.sleep(0.01)
            assert AGENTS["f1"].backward.in_flight() == [] and time.monotonic() - failed_at < 1.0
            aborts = [rank for sender, rank, kind in spy.sent if sender == "f0" and kind == "abort_backward"]
            assert sorted(aborts) == [1, 2]  # every participant but the root itself
            time.sleep(2.0)  # the slow node has returned by now: its closed part reports nothing
            assert [kind for sender, _, kind in spy.sent if sender == "f1"
                    and kind in ("pass_finished", "push_gradients")] == []
    finally:
        world.close()


def test_a_timeout_with_every_part_reported_names_nobody():
    """The deadline can fire after the last report arrived but before the root woke: it says so."""
    world = World(["n0"], rpc_timeout=5)
    try:
        with context("n0") as ctx:
            drive = Drive(ctx, 1, {0})
            drive.waiting.clear()  # every part has reported
            AGENTS["n0"].backward.failures.expire(drive, 0.5)
            assert isinstance(drive.result.exception(), errors.DeadlineExceeded)
            assert str(drive.result.exception()) == (f"the backward pass of context {ctx.id} did not finish within "
                                                     "0.5 s; still waiting for nobody")
    finally:
        world.close()


def test_without_a_timeout_a_pass_runs_and_sets_no_timer():
    world = World(["u0", "u1"], rpc_timeout=0)  # 0: no timeout, as torch's
    try:
        x = torch.randn(3, requires_grad=True)
        pending = AGENTS["u0"].deadlines.pending()
        with context("u0") as ctx:
            y = call("u0", "u1", torch.exp, x)
            backward("u0", ctx, [y.sum()])
            assert AGENTS["u0"].deadlines.pending() == pending
            assert torch.equal(AGENTS["u0"].contexts.get(ctx.id).gradients()[x], torch.exp(x.detach()))
    finally:
        world.close()


def test_a_connection_to_a_participant_that_breaks_fails_the_pass_naming_it_as_it_broke():
    """Only the root's connection to p2 breaks (p2 stays a member): the pass fails at once, naming
    p2, as Unreachable when the connection timed out and as Unavailable when it was closed."""
    names = ["p0", "p1", "p2"]
    world = World(names, rpc_timeout=30)
    try:
        x = torch.randn(3, requires_grad=True)
        for kind in (errors.Unreachable, errors.Unavailable):
            with context("p0") as ctx:
                y = call("p0", "p2", slow_in_backward, x)
                threading.Timer(0.3, lambda: AGENTS["p0"].peers.close_peer(2, kind("the test broke it"))).start()
                began = time.monotonic()
                with pytest.raises(errors.Unavailable) as raised:
                    backward("p0", ctx, [y.sum()])
                assert time.monotonic() - began < 1.4
                assert str(raised.value) == f"the backward pass of context {ctx.id} lost 'p2' (rank 2): the test broke it"
                assert isinstance(raised.value, errors.Unreachable) == (kind is errors.Unreachable)
                assert raised.value.worker == "p2"
            time.sleep(1.5)  # p2's slow node ends before the next round
    finally:
        world.close()


def test_a_broken_connection_fails_only_the_passes_that_need_that_peer():
    """Two passes in flight at n0: one waits on n2, one on n1 only. n0's connection to n2 breaks: the
    first fails at once, naming n2; the second goes on and gives its gradient."""
    world = World(["n0", "n1", "n2"], rpc_timeout=30)
    try:
        x = torch.randn(3, requires_grad=True)
        other = {}

        def through_n1():
            with context("n0") as ctx:
                y = call("n0", "n1", slow_in_backward, x * 3)
                backward("n0", ctx, [y.sum()])
                other["grad"] = gradients("n0", ctx.id)[x]

        with context("n0") as ctx:
            y = call("n0", "n2", slow_in_backward, x)
            thread = threading.Thread(target=through_n1)
            thread.start()

            def break_it_with_both_in_flight():
                deadline = time.monotonic() + 5
                while len(AGENTS["n0"].backward.in_flight()) < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                both["in flight"] = len(AGENTS["n0"].backward.in_flight())
                AGENTS["n0"].peers.close_peer(2, errors.Unreachable("the test broke it"))

            both = {}
            threading.Thread(target=break_it_with_both_in_flight).start()
            with pytest.raises(errors.Unreachable, match=rf"context {ctx.id} lost 'n2' \(rank 2\)"):
                backward("n0", ctx, [y.sum()])
            thread.join(10)
        assert both["in flight"] == 2, both  # the break came while both passes waited
        assert torch.equal(other["grad"], torch.full((3,), 3.0))
    finally:
        world.close()


def chain_on(x, here, there):
    """On ``here``: on to ``there``, which is slow in backward; the root never talks to ``there``."""
    return call(here, there, slow_in_backward, x * 2)


@pytest.mark.parametrize("heard_by", ["departure notice", "coordinator's abort"])
def test_a_participant_the_root_never_talked_to_declared_dead_fails_the_pass_naming_it(heard_by, monkeypatch):
    """q2 is declared dead while the pass waits on it (it is alive: no connection breaks). The root
    hears it twice, by the world's departure notice and by the coordinator's abort of the passes q2
    took part in; each alone fails the pass at once, naming q2 (the other is switched off here)."""
    off = "handle_abort" if heard_by == "departure notice" else "on_departed"
    original = getattr(PassFailures, off)
    monkeypatch.setattr(PassFailures, off, lambda self, *args: None if self.name == "q0" else original(self, *args))
    names = ["q0", "q1", "q2"]
    world = World(names, rpc_timeout=30)
    try:
        x = torch.randn(3, requires_grad=True)
        with context("q0") as ctx:
            y = call("q0", "q1", chain_on, x, "q1", "q2")
            during = {}

            def declare():
                during["q0"], during["q1"] = AGENTS["q0"].backward.in_flight(), AGENTS["q1"].backward.in_flight()
                AGENTS["q0"].coordinator.membership.depart(2, "the test declared it dead", failed=True)

            threading.Timer(0.3, declare).start()
            began = time.monotonic()
            with pytest.raises(errors.Unavailable) as raised:
                backward("q0", ctx, [y.sum()])
            assert time.monotonic() - began < 1.4
            assert re.fullmatch(rf"worker 'q2' \(rank 2\) died during the backward pass of context {ctx.id}: .*the "
                                r"test declared it dead.*", str(raised.value), re.S), str(raised.value)
            assert raised.value.worker == "q2"
            ((context_id, _, root),) = during["q0"]  # the root lists the pass it drives, with itself as root
            assert (context_id, root) == (ctx.id, 0) and [(c, r) for c, _, r in during["q1"]] == [(ctx.id, 0)]
    finally:
        world.close()


def test_a_graceful_departure_mid_pass_says_left(monkeypatch):
    """Heard by the departure notice alone (the coordinator's abort is switched off at the root): a
    participant that left, not died, is named as having left."""
    monkeypatch.setattr(PassFailures, "handle_abort", lambda self, *args: None)
    world = World(["g0", "g1", "g2"], rpc_timeout=30)
    try:
        x = torch.randn(3, requires_grad=True)
        with context("g0") as ctx:
            y = call("g0", "g1", chain_on, x, "g1", "g2")
            threading.Timer(0.3, lambda: AGENTS["g0"].coordinator.membership.depart(
                2, "the test made it leave", failed=False)).start()
            with pytest.raises(errors.Unavailable, match=rf"^worker 'g2' \(rank 2\) left during the backward pass "
                                                         rf"of context {ctx.id}: the test made it leave$"):
                backward("g0", ctx, [y.sum()])
    finally:
        world.close()


def test_a_participant_whose_root_departs_takes_its_parts_off_at_once(monkeypatch):
    """h1 is the root, h2 waits in a slow node of its part; h1 is declared dead. h2 hears it by the
    departure notice alone (the coordinator's abort is switched off) and takes the part off there
    and then, not when its node ends (the wave already running still pushes what it makes)."""
    monkeypatch.setattr(PassFailures, "handle_abort", lambda self, *args: None)
    world = World(["h0", "h1", "h2"], rpc_timeout=3)
    try:
        x = torch.randn(3, requires_grad=True)
        with context("h1") as ctx:
            y = call("h1", "h2", slow_in_backward, x, 4)
            root, outcome = backward_in_thread("h1", ctx, [y.sum()])
            deadline = time.monotonic() + 5
            while not AGENTS["h2"].backward.in_flight():
                assert time.monotonic() < deadline, "h2's part never started"
                time.sleep(0.01)
            AGENTS["h0"].coordinator.membership.depart(1, "the test declared it dead", failed=True)
            deadline = time.monotonic() + 2.5  # the node runs 4 s: only the notice ends the part before
            while AGENTS["h2"].backward.in_flight():
                assert time.monotonic() < deadline, AGENTS["h2"].backward.in_flight()
                time.sleep(0.01)
            root.join(10)
            assert isinstance(outcome.get("error"), errors.Unavailable), outcome  # h1 lost h2 as h2 let it go
    finally:
        world.close()


def test_a_context_released_mid_pass_takes_its_parts_off_there():
    world = World(["c0", "c1"], rpc_timeout=5)
    try:
        x = torch.randn(3, requires_grad=True)
        with context("c0") as ctx:
            y = call("c0", "c1", slow_in_backward, x)
            left = {}

            def release():
                assert STARTED.wait(5), "c1's part never began"
                AGENTS["c1"].contexts.release(ctx.id)
                left["c1"] = AGENTS["c1"].backward.in_flight()

            STARTED.clear()
            releasing = threading.Thread(target=release)
            releasing.start()
            backward("c0", ctx, [y.sum()])  # the wave already running there still pushes what it made
            releasing.join(5)
            assert left["c1"] == []  # but the part was taken off at once
    finally:
        world.close()


def test_a_pass_reaching_a_worker_that_released_its_context_fails_at_once_naming_it():
    """As torch's fails when a worker no longer knows the context: the worker tells the root, which
    fails the pass then, not at its timeout (a push is a notification: the sender hears nothing)."""
    world = World(["r0", "r1"], rpc_timeout=30)
    try:
        x = torch.randn(3, requires_grad=True)
        with context("r0") as ctx:
            y = call("r0", "r1", torch.mul, x, 2.0)
            AGENTS["r1"].contexts.release(ctx.id, sender=0)  # r1 alone lets it go (r0 is not told)
            began = time.monotonic()
            with pytest.raises(errors.FailedPrecondition, match=f"context {ctx.id} was already released on r1") as raised:
                backward("r0", ctx, [y.sum()])
            assert raised.value.worker == "r1"
            assert time.monotonic() - began < 5  # not the 30 s timeout
            assert AGENTS["r0"].backward.in_flight() == []
    finally:
        world.close()


def test_ctrl_c_during_a_pass_stops_it_everywhere_and_stays_a_keyboard_interrupt():
    """SIGINT reaches the caller's (main) thread while a participant is slow in its node: the caller
    gets KeyboardInterrupt itself, not a RuntimeError, and the participant is told to stop at once
    (its part is off well before the node ends and far before the pass's timeout)."""
    world = World(["k0", "k1"], rpc_timeout=30)
    try:
        assert threading.current_thread() is threading.main_thread()
        x = torch.randn(3, requires_grad=True)
        # Python's own Ctrl-C handler, as in a terminal (a process started in the background ignores SIGINT)
        interrupting = signal.signal(signal.SIGINT, signal.default_int_handler)
        with context("k0") as ctx:
            y = call("k0", "k1", slow_in_backward, x, 4)
            threading.Timer(0.5, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    backward("k0", ctx, [y.sum()])
            finally:
                signal.signal(signal.SIGINT, interrupting)
            deadline = time.monotonic() + 2  # the slow node runs 4 s
            while AGENTS["k1"].backward.in_flight():
                assert time.monotonic() < deadline, "k1 was not told to stop"
                time.sleep(0.01)
    finally:
        world.close()


def test_a_push_to_a_send_point_outside_the_pass_fails_it_at_once_naming_the_worker():
    """u1's part has started and waits for u2's gradient when a push for a message id its part does not
    have arrives (on the native path into the part the core runs, through the push lane): the pass fails
    at once, as on the Python path, naming u1 and the send point, instead of at its timeout."""
    from tests.helpers.pushes import protobuf_push

    names = ["u0", "u1", "u2"]
    world = World(names, rpc_timeout=30)
    try:
        STARTED.clear()
        x = torch.randn(3, requires_grad=True)
        with context("u0") as ctx:
            y = call("u0", "u1", chain_on, x, "u1", "u2")

            def forge():
                assert STARTED.wait(10)  # u2's part runs: u1's waits for it
                ((_, pass_id, _),) = AGENTS["u1"].backward.in_flight()
                AGENTS["u0"].peers.notify(1, protobuf_push(ctx.id, pass_id, None, [999], [torch.zeros(3)], 0, []))

            threading.Thread(target=forge).start()
            began = time.monotonic()
            with pytest.raises(errors.InvalidArgument, match=r"gradient arrived for send point 999, which takes no "
                                                             r"part in this pass here") as raised:
                backward("u0", ctx, [y.sum()])
            assert time.monotonic() - began < 1.4 and raised.value.worker == "u1", str(raised.value)
    finally:
        world.close()
