"""The backward protocol run by real agents in one process: gradients equal single-process torch's
bit for bit through chains, fan-outs, retained and second-order passes, the big-graph path (the root
asks the holders, the plan goes ahead: test_big_graph.py), and every failure names its worker
(timeouts and departures: test_backward_failures.py)."""

from __future__ import annotations

import time

import pytest
import torch

from distautograd import errors
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.engine import nodes
from distautograd.runtime import anomaly, backward as backward_module, inspection
from distautograd.runtime import push_sending
from distautograd.runtime.push_sending import PushSending
from distautograd.transport.link import as_protobuf  # a push the core serialized, as protobuf to change
from distautograd.views import trace
from tests.helpers.inprocess import AGENTS, World, backward, call, context, gradients

NAMES = ["w0", "w1", "w2"]
torch.manual_seed(0)
WEIGHTS = {name: torch.randn(4, 4, dtype=torch.float64) for name in NAMES}  # each worker's parameter
PARAMS = {name: w.clone().requires_grad_() for name, w in WEIGHTS.items()}


@pytest.fixture
def world():  # a world per test (they start in 0.1 s): every test runs the agents' construction too
    world = World(NAMES, rpc_timeout=5)  # a pass that cannot end fails in 5 s, not at mutmut's timeout
    yield world
    world.close()


# ---------------------------------------------------------------- what workers run (found by name)

def stage(name, x):
    return torch.tanh(x @ PARAMS[name])


def chain(x, path):
    """``stage`` on path[0], then on to the rest of the path from there."""
    y = stage(path[0], x)
    if len(path) > 1:
        y = call(path[0], path[1], chain, y, path[1:])
    return y


def two_outputs(x):
    return x * 2, x.exp()


def fan(x, name):
    """From ``name``: the same tensor to both other workers, twice to one of them, summed here."""
    others = [n for n in NAMES if n != name]
    a = call(name, others[0], torch.add, x, x)
    b = call(name, others[1], stage, others[1], x)
    return a.sum() * b


def chain_sum(xs):
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def sum_all_but_the_last_and_pass_it_on(xs, here, there):
    """The last of the tensors received (the recv node's last output, not its first) goes on as it came."""
    return chain_sum(xs[:-1]) + call(here, there, torch.exp, xs[-1])


def chain_sum_then_exp_on(xs, here, there):
    return call(here, there, torch.exp, chain_sum(xs))


class FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise ValueError("Simulate error on backward pass")


class NanInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class NoGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


def two_sums(x):
    return x.sum(), (x * 2).sum()


def fails_in_backward(x):
    return FailsInBackward.apply(x)


def nan_in_backward(x):
    return NanInBackward.apply(x)


EXTRA = torch.full((4,), 0.5, dtype=torch.float64, requires_grad=True)  # w2's second parameter


def to_w2_and_back(x):
    """On w1: x (no gradient) times w1's parameter, then on through w2; w2's result goes back."""
    return call("w1", "w2", two_parameters, x @ PARAMS["w1"])


def two_parameters(y):
    return torch.tanh(y @ PARAMS["w2"]) * EXTRA


# ---------------------------------------------------------------- the oracle

def local_chain(x, path):
    params = {name: w.clone().requires_grad_() for name, w in WEIGHTS.items()}
    y = x
    for name in path:
        y = torch.tanh(y @ params[name])
    return y, params


def the_grads(name, context_id):
    return gradients(name, context_id)


def test_a_chain_of_three_workers_gives_torchs_gradients_bit_for_bit(world):
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w1", chain, x, ["w1", "w2", "w0"])
        backward("w0", ctx, [y.sum()])
        got = {name: gradients(name, ctx.id) for name in NAMES}
        runs = {name: AGENTS[name].contexts.get(ctx.id).runs for name in NAMES}
        assert set(got["w0"]) == {x, PARAMS["w0"]}
    x2 = x.detach().clone().requires_grad_()
    want_y, params = local_chain(x2, ["w1", "w2", "w0"])
    want_y.sum().backward()
    assert torch.equal(y, want_y)
    assert torch.equal(got["w0"][x], x2.grad)
    for name in NAMES:
        assert torch.equal(got[name][PARAMS[name]], params[name].grad), name
    assert all(p.grad is None for p in PARAMS.values()) and x.grad is None  # .grad is never touched
    assert not any(g.requires_grad for grads in got.values() for g in grads.values())  # no create_graph unasked
    assert not any(runs.values()), runs  # nothing recorded for views nobody asked for


def test_the_pushes_run_inside_the_cores_read_on_the_native_path(frames, monkeypatch):
    """On the native path every push of a chain's pass runs inside the core's read of it (the push lane,
    native/csrc/push_lane.cpp): the first to reach each worker through the pass protocol's
    ``take_decoded_push``, which starts the part, and every later one straight into the part the core
    runs, with no Python between; none reaches ``handle_push``. On the Python path each reaches
    ``handle_push`` as protobuf parsed it. The gradients are torch's either way."""
    from distautograd.transport import frames as frames_module

    kinds, reads, taken = [], [], []
    handle_push, take = backward_module.Backward.handle_push, backward_module.Backward.take_decoded_push
    read_frame = frames_module.NativeReader.read_frame

    def spy(self, link, body, attachments):
        kinds.append(type(body).__name__)
        return handle_push(self, link, body, attachments)

    def taking(self, *args):
        taken.append(self.name)
        return take(self, *args)

    def reading(self, *args):
        read = read_frame(self, *args)
        reads.append(type(read).__name__)
        return read

    monkeypatch.setattr(backward_module.Backward, "handle_push", spy)  # before the agents bind it
    monkeypatch.setattr(backward_module.Backward, "take_decoded_push", taking)
    monkeypatch.setattr(frames_module.NativeReader, "read_frame", reading)
    world = World(NAMES, rpc_timeout=5)
    try:
        x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
        with context("w0") as ctx:
            y = call("w0", "w1", chain, x, ["w1", "w2", "w0"])
            backward("w0", ctx, [y.sum()])
            got = {name: gradients(name, ctx.id) for name in NAMES}
            lanes = [AGENTS[name].backward.push_lane for name in NAMES if AGENTS[name].backward.push_lane is not None]
            deadline = time.monotonic() + 5  # a participant ends its part just after its last push
            while any(len(lane) for lane in lanes) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert [len(lane) for lane in lanes] == [0] * len(lanes)  # every part dropped from the lane as it ended
    finally:
        world.close()
    want_y, params = local_chain(x.detach().clone().requires_grad_(), ["w1", "w2", "w0"])
    want_y.sum().backward()
    for name in NAMES:
        assert torch.equal(got[name][PARAMS[name]], params[name].grad), name
    if frames == "native":  # w0 -> w1 -> w2 -> w0 (the root's part), then w2, w1, w0 again
        assert kinds == [] and reads.count("Taken") == 6 and sorted(taken) == ["w1", "w2"], (reads, taken)
    else:
        assert kinds == ["PushGradients"] * 6 and reads == [] and taken == [], kinds


def _heard(context_id):
    """What the coordinator records of the context, once its pass has ended."""
    coordinator = AGENTS["w0"].coordinator
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen = [c for c in coordinator._status(pb.StatusRequest(), None).contexts if c.context_id == context_id]
        if seen and seen[0].passes == 1 and seen[0].passes_in_flight == 0:
            return seen[0]
        time.sleep(0.01)
    raise AssertionError(f"the coordinator never heard pass of context {context_id} end")


def _leaves_heard(context_id):
    """The coordinator's count of leaves reached per rank in the context."""
    return dict(_heard(context_id).leaves_with_gradients)


def test_the_coordinator_hears_who_took_part_and_forgets_the_context_when_it_ends(world):
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    pending = AGENTS["w0"].deadlines.pending()
    with context("w0") as ctx:
        y = call("w0", "w1", chain, x, ["w1", "w2"])
        backward("w0", ctx, [y.sum()])
        assert set(_heard(ctx.id).participants) == {0, 1, 2}
        assert AGENTS["w0"].deadlines.pending() == pending  # the root's timer for the pass is gone
    coordinator = AGENTS["w0"].coordinator
    deadline = time.monotonic() + 5
    while any(c.context_id == ctx.id for c in coordinator._status(pb.StatusRequest(), None).contexts):
        assert time.monotonic() < deadline, "the coordinator still lists a context that ended"
        time.sleep(0.01)


def test_the_coordinator_hears_how_many_leaves_each_worker_reached(world):
    """Two ways a part's count reaches the root: a chain, where each part ends with a push that says
    so (and passes on what it learned); and here w2's part ends with a push to w1 that says it is
    done (2 leaves), while w1's ends with no push (x needs no gradient), so its PassFinished to the
    root says so for both; the root counts its own."""
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w1", chain, x, ["w1", "w2"])
        backward("w0", ctx, [y.sum()])
        assert _leaves_heard(ctx.id) == {0: 1, 1: 1, 2: 1}
    with context("w0") as ctx:
        out = call("w0", "w1", to_w2_and_back, torch.randn(4, dtype=torch.float64))
        backward("w0", ctx, [(out * PARAMS["w0"][0]).sum()])
        assert set(the_grads("w2", ctx.id)) == {PARAMS["w2"], EXTRA} and set(the_grads("w1", ctx.id)) == {PARAMS["w1"]}
        assert _leaves_heard(ctx.id) == {0: 1, 1: 1, 2: 2}
    with context("w0") as ctx:  # w1 ends with no push and learned of no other part: it reports alone
        out = call("w0", "w1", stage, "w1", torch.randn(1, 4, dtype=torch.float64))
        backward("w0", ctx, [out.sum()])
        assert _leaves_heard(ctx.id) == {1: 1}
        for name in NAMES:  # each part was taken off the passes going on when it finished
            assert AGENTS[name].backward.in_flight() == [], name


def test_a_traced_pass_gives_the_same_gradients_and_pairs_every_push_with_its_arrival(world):
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    with context("w0", inspect=inspection.TRACE) as ctx:
        y = call("w0", "w1", chain, x, ["w1", "w2"])
        backward("w0", ctx, [y.sum()])
        got = the_grads("w0", ctx.id)[x]
        events = trace.take(ctx.id)  # every agent's: they share this process
    x2 = x.detach().clone().requires_grad_()
    local, _ = local_chain(x2, ["w1", "w2"])
    local.sum().backward()
    assert torch.equal(got, x2.grad)
    sent = {e["id"]: e["name"] for e in events if e["ph"] == "s" and e["name"].startswith("gradients to")}
    arrived = {e["id"]: e["name"] for e in events if e["ph"] == "f" and e["name"].startswith("gradients from")}
    # out (w1 -> w0), z (w2 -> w1), y (w1 -> w2), x (w0 -> w1): each gradient goes back the other way
    assert sorted(sent.values()) == ["gradients to w0", "gradients to w1", "gradients to w1", "gradients to w2"]
    assert sorted(arrived.values()) == ["gradients from w0", "gradients from w1", "gradients from w1",
                                        "gradients from w2"]
    assert set(sent) == set(arrived)  # every arrow has both ends
    waves = {e["args"]["worker"] for e in events if e["ph"] == "X" and e["name"].startswith("backward: ")}
    assert waves == set(NAMES)  # every worker's waves are in the trace
    (root,) = [e for e in events if e["ph"] == "X" and e["name"] == "dist_autograd.backward"]
    assert root["ts"] > 0 and root["dur"] > 0 and root["args"]["participants"] == 3


def test_an_untraced_pass_leaves_no_trace_behind(world):
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w1", chain, x, ["w1", "w2"])
        backward("w0", ctx, [y.sum()])
        assert ctx.id not in trace._events  # nothing kept for a context nobody will take a trace of


def test_a_gradient_that_is_none_crosses_as_none(world):
    """y's send point is reached, but the Function on top of it gives no gradient: w0's recv point
    pushes None to w1, which runs nothing more, as torch leaves x.grad None."""
    x = torch.randn(3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w1", torch.exp, x)
        backward("w0", ctx, [(NoGradient.apply(y) * w).sum()])
        got = gradients("w0", ctx.id)
        assert x not in got and torch.equal(got[w], torch.exp(x.detach()))
    for name in NAMES:  # every part ended: nothing of the pass is left anywhere
        deadline = time.monotonic() + 2
        while AGENTS[name].backward.in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert AGENTS[name].backward.in_flight() == [], name


def test_a_push_naming_a_send_point_that_takes_no_part_fails_the_pass_at_once(world, monkeypatch):
    original = PushSending._send

    def wrong_id(self, dest, request, attachments):
        if self._peers.name == "w1":
            request = as_protobuf(request)
            request.push_gradients.message_ids[0] += 1  # no send point of this pass at w0
        return original(self, dest, request, attachments)

    monkeypatch.setattr(PushSending, "_send", wrong_id)
    x = torch.randn(3, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w1", torch.exp, x)
        z = call("w0", "w1", torch.sin, x)  # w0's part waits for w1's push for x's send point
        began = time.monotonic()
        with pytest.raises(errors.InvalidArgument, match=r"^gradient arrived for send point \d+, which takes no part "
                                                         r"in this pass here"):
            backward("w0", ctx, [(y * z).sum()])
        assert time.monotonic() - began < 2  # at once, not at the 5 s timeout


def test_a_push_that_cannot_go_is_retried_on_a_fresh_connection_and_given_up_on_in_time(world, monkeypatch):
    from distautograd.runtime.peers import Peers
    notify, attempts = Peers.notify, []

    def failing(times):
        def flaky(peers, rank, request, *args, **kwargs):
            if as_protobuf(request).WhichOneof("body") == "push_gradients" and peers.name == "w1":
                attempts.append(rank)
                if len(attempts) <= times:
                    raise errors.Unavailable("the connection broke")
            return notify(peers, rank, request, *args, **kwargs)
        return flaky

    x = torch.randn(3, requires_grad=True)
    for times in (push_sending.PUSH_RETRIES, push_sending.PUSH_RETRIES + 1):
        attempts.clear()
        monkeypatch.setattr(Peers, "notify", failing(times))
        with context("w0") as ctx:
            y = call("w0", "w1", torch.exp, x)
            if times == push_sending.PUSH_RETRIES:  # the last retry goes through
                backward("w0", ctx, [y.sum()])
                assert torch.equal(gradients("w0", ctx.id)[x], torch.exp(x.detach()))
            else:
                with pytest.raises(RuntimeError):
                    backward("w0", ctx, [y.sum()])
            assert len(attempts) == push_sending.PUSH_RETRIES + 1
    attempts.clear()
    monkeypatch.setattr(Peers, "notify", failing(100))
    monkeypatch.setattr(AGENTS["w1"].world, "entry", lambda rank: None)  # as if w0 had left
    with context("w0") as ctx:
        y = call("w0", "w1", torch.exp, x)
        with pytest.raises(RuntimeError):
            backward("w0", ctx, [y.sum()])
    assert attempts == [0]  # no retry towards a worker that is gone


def test_a_root_that_is_the_second_tensor_a_call_returned_starts_from_that_tensor(world):
    """The root is output 1 of w0's recv node: what it sets off is its own send point, not output 0's."""
    x = torch.randn(3, requires_grad=True)
    with context("w0") as ctx:
        first, second = call("w0", "w1", two_sums, x)
        backward("w0", ctx, [second])
        assert torch.equal(gradients("w0", ctx.id)[x], torch.full((3,), 2.0))


def test_roots_must_be_scalars_unless_their_gradients_are_given(world):
    x = torch.randn(3, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w1", torch.exp, x)
        with pytest.raises(RuntimeError, match=r"root 0 of shape \(3,\) is not a scalar"):
            backward("w0", ctx, [y])
        backward("w0", ctx, [y], grads=[torch.ones(3)])  # with its gradient, any shape
        assert torch.equal(gradients("w0", ctx.id)[x], torch.exp(x.detach()))


def test_a_gradient_of_zeros_crosses_in_no_bytes_and_a_plain_backward_returns_nothing(world):
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    with context("w0", inspect=inspection.GRAPH) as ctx:
        y = call("w0", "w1", torch.exp, x)
        assert backward("w0", ctx, [(y * 0).sum()]) is None  # as torch's dist_autograd.backward
        assert list(ctx.pushed.values()) == [0], ctx.pushed  # zeros are said, not sent
        assert torch.equal(gradients("w0", ctx.id)[x], torch.zeros(4, dtype=torch.float64))


def test_the_context_is_released_on_every_worker_it_reached(world):
    with context("w0") as ctx:
        y = call("w0", "w1", chain, torch.randn(1, 4, dtype=torch.float64, requires_grad=True), ["w1", "w2"])
        backward("w0", ctx, [y.sum()])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(ctx.id in AGENTS[n].contexts.ids() for n in NAMES):
        time.sleep(0.01)
    assert not [n for n in NAMES if ctx.id in AGENTS[n].contexts.ids()]
    for name in NAMES:
        assert AGENTS[name].backward.in_flight() == []


def test_a_fan_out_and_a_tensor_sent_twice_sum_as_torch(world):
    x = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w0", fan, x, "w0")  # a call to itself: w0 sends to w1 and w2 from a worker thread
        backward("w0", ctx, [y.sum()])
        got = gradients("w0", ctx.id)[x]
        got_w2 = gradients("w2", ctx.id)[PARAMS["w2"]]
    x2 = x.detach().clone().requires_grad_()
    w2 = WEIGHTS["w2"].clone().requires_grad_()
    xa = x2.view_as(x2)  # as the recv point on w1: the two uses of x meet there first (g + g), then x's
    ((xa + xa).sum() * torch.tanh(x2 @ w2)).sum().backward()
    assert torch.equal(got, x2.grad) and torch.equal(got_w2, w2.grad)


def test_retained_passes_accumulate_and_a_reached_output_alone_completes(world):
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with context("w0") as ctx:
        a, b = call("w0", "w1", two_outputs, x)  # b's send point is never reached
        for _ in range(3):
            backward("w0", ctx, [a.sum()], retain_graph=True)
        assert torch.equal(gradients("w0", ctx.id)[x], torch.full((3,), 6.0, dtype=torch.float64))
        assert ctx.passes == 3 and AGENTS["w1"].contexts.get(ctx.id).passes == 3  # counted on every part
        backward("w0", ctx, [(a * b).sum()])  # now both, and the graph may go
        x2 = x.detach().clone().requires_grad_()
        (x2 * 2 * x2.exp()).sum().backward()
        assert torch.equal(gradients("w0", ctx.id)[x], x2.grad + 6)
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            backward("w0", ctx, [(a * b).sum()])


def test_capture_hands_back_the_roots_leaves_and_accumulates_nothing(world):
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w1", chain, x, ["w1", "w2"])
        captured = backward("w0", ctx, [y.sum()], capture=True, grads=[torch.tensor(2.0, dtype=torch.float64)])
        assert gradients("w0", ctx.id) == {} and gradients("w1", ctx.id) == {}
    x2 = x.detach().clone().requires_grad_()
    want_y, _ = local_chain(x2, ["w1", "w2"])
    (want_y.sum() * 2).backward()
    assert torch.equal(captured.grads[torch.autograd.graph.get_gradient_edge(x).node], x2.grad)


def second_order_of_sin(ctx, x, y, between=lambda: None) -> None:
    """y = sin(x) computed across workers: its gradient with create_graph, then the gradient of that
    gradient's sum, each equal to one process's (``between`` checks what the first pass left)."""
    captured = backward("w0", ctx, [y.sum()], capture=True, create_graph=True, retain_graph=True)
    between()
    dx = captured.grads[torch.autograd.graph.get_gradient_edge(x).node]
    backward("w0", ctx, [dx.sum()])
    got = gradients("w0", ctx.id)[x]
    x2 = x.detach().clone().requires_grad_()
    (dx2,) = torch.autograd.grad(torch.sin(x2).sum(), x2, create_graph=True)
    dx2.sum().backward()
    assert torch.equal(dx, dx2) and torch.equal(got, x2.grad)


def test_second_order_crosses_workers_as_the_first(world):
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    with context("w0") as ctx:
        second_order_of_sin(ctx, x, call("w0", "w1", torch.sin, x))


KEPT: dict = {}


def keep(x):
    KEPT["x"] = x


def sin_of_kept():
    return torch.sin(KEPT["x"])


def sin_of_kept_on(here, there):
    return call(here, there, sin_of_kept)


def test_a_gradient_that_requires_grad_is_a_send_point_to_where_it_goes(world):
    """w1 got x from w0 and never sent w0 anything; its sin(x) reaches w0 through w2. Under
    create_graph, the gradient w1 pushes to w0 requires grad: a send point of w1's to w0, so w0 is
    now a worker w1 knows in the context (torch's _known_worker_ids), and the second pass goes back
    through it."""
    KEPT.clear()
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    with context("w0") as ctx:
        call("w0", "w1", keep, x)
        y = call("w0", "w2", sin_of_kept_on, "w2", "w1")
        on_w1 = AGENTS["w1"].contexts.get(ctx.id)
        assert on_w1._known_worker_ids() == {2}

        def known_after_the_first_pass():
            assert on_w1._known_worker_ids() == {0, 2}
            assert AGENTS["w0"].contexts.get(ctx.id).peers == {1, 2}  # w1's gradients came from w1: released there

        second_order_of_sin(ctx, x, y, known_after_the_first_pass)
    KEPT.clear()


def test_a_root_with_no_participants_runs_here_alone(world):
    x = torch.randn(3, requires_grad=True)
    with context("w0") as ctx:
        backward("w0", ctx, [(x * x).sum()])
        assert torch.equal(gradients("w0", ctx.id)[x], 2 * x.detach())


def test_an_error_in_a_backward_function_names_its_node_there_and_here(world):
    x = torch.randn(3, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w2", fails_in_backward, x)
        with pytest.raises(RuntimeError, match="Error on Node 2: Simulate error on backward pass") as raised:
            backward("w0", ctx, [y.sum()])
        assert "raised on worker 'w2' (rank 2)" in str(raised.value)
    with context("w0") as ctx:
        y = call("w0", "w1", torch.exp, FailsInBackward.apply(x))
        with pytest.raises(RuntimeError, match="Error on Node 0: Simulate error") as raised:
            backward("w0", ctx, [y.sum()])
        assert isinstance(raised.value.__cause__, ValueError)
        assert str(raised.value) == ("Error on Node 0: Simulate error on backward pass\n\nValueError raised on worker "
                                     f"'w0' (rank 0) during the backward pass of context {ctx.id}")  # nothing after
    for name in NAMES:  # the failed passes ended everywhere
        deadline = time.monotonic() + 5
        while AGENTS[name].backward.in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert AGENTS[name].backward.in_flight() == [], name


def test_anomaly_mode_stops_at_the_node_that_made_a_nan(world):
    x = torch.randn(3, requires_grad=True)
    with context("w0", anomaly=anomaly.NAN) as ctx:
        y = call("w0", "w1", nan_in_backward, x)
        with pytest.raises(RuntimeError, match="(?s)Error on Node 1.*NanInBackward.*nan.*On worker 'w1': node "
                                               "NanInBackward"):
            backward("w0", ctx, [y.sum()])
    with context("w0") as ctx:  # off: the NaN goes through as torch's would
        y = call("w0", "w1", nan_in_backward, x)
        backward("w0", ctx, [y.sum()])
        assert torch.isnan(gradients("w0", ctx.id)[x]).all()


def test_the_graph_view_counts_runs_and_pushed_bytes(world):
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    with context("w0", inspect=inspection.GRAPH) as ctx:
        y = call("w0", "w1", torch.exp, x)
        backward("w0", ctx, [y.sum()])
        theirs = AGENTS["w1"].contexts.get(ctx.id)
        assert ctx.passes == 1 and theirs.passes == 1 and theirs.inspect & inspection.GRAPH
        assert list(theirs.pushed.values()) == [4 * 8], theirs.pushed  # one float64 gradient of 4 crossed
        ran = {type(node).__name__: entry["ran"] for node, entry in ctx.runs.items()}
        assert ran and set(ran.values()) == {1}, ran  # every node reached here ran once
        assert [entry["ran"] for entry in theirs.runs.values()] == [1, 1], theirs.runs  # exp, and its send


def test_under_torchs_profiler_the_root_runs_its_part_on_the_callers_thread(world):
    x = torch.randn(3, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w1", torch.exp, x)
        with torch.profiler.profile() as prof:
            backward("w0", ctx, [y.sum()])
        assert torch.equal(gradients("w0", ctx.id)[x], torch.exp(x.detach()))
    names = {e.key for e in prof.key_averages()}
    assert backward_module.BACKWARD_NAME in names
    assert nodes.SEND_NAME in names  # w1's push to w0 ran on this thread, the one the profiler records


def test_malformed_backward_messages_are_refused_and_the_worker_goes_on(world):
    w0 = AGENTS["w0"]
    with pytest.raises(errors.InvalidArgument, match="^a backward message must name its distributed autograd context"):
        w0.peers.request(1, pb.Request(push_gradients=pb.PushGradients(pass_id=1, root=0)), (), 5).result()
    with pytest.raises(errors.InvalidArgument, match="drives no backward pass"):
        w0.peers.request(1, pb.Request(push_gradients=pb.PushGradients(context_id=7, pass_id=1, root=1)),
                         (), 5).result()
    test_a_chain_of_three_workers_gives_torchs_gradients_bit_for_bit(world)


def test_a_push_with_the_wrong_number_of_gradients_fails_the_pass(world, monkeypatch):
    original = PushSending._send

    def one_id_too_many(self, dest, request, attachments):
        if self._peers.name == "w1":
            request = as_protobuf(request)
            request.push_gradients.message_ids.append(request.push_gradients.message_ids[0] + 1)
        return original(self, dest, request, attachments)

    x = torch.randn(3, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w1", torch.exp, x)
        monkeypatch.setattr(PushSending, "_send", one_id_too_many)
        with pytest.raises(errors.InvalidArgument, match=r"^gradients must be a list of tensors \(or None\), one per "
                                                         r"message id"):
            backward("w0", ctx, [y.sum()])
    sender = {"name": "w0"}  # now the root's push to w1, the first message of w1's part, is the bad one

    def from_the_root(self, dest, request, attachments):
        if self._peers.name == sender["name"]:
            request = as_protobuf(request)
            request.push_gradients.message_ids.append(request.push_gradients.message_ids[0] + 1)
        return original(self, dest, request, attachments)

    monkeypatch.setattr(PushSending, "_send", from_the_root)
    with context("w0") as ctx:
        y = call("w0", "w1", torch.exp, x)
        began = time.monotonic()
        with pytest.raises(errors.InvalidArgument, match="one per message id"):  # reported, not timed out
            backward("w0", ctx, [y.sum()])
        assert time.monotonic() - began < 2
