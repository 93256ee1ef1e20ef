"""The backward engine in one process: virtual workers joined by queues (tests/helpers/engine_sim.py).

Every scenario runs twice: across virtual workers, and as plain single-process autograd with the
same tensors. Gradients must be equal bit for bit, every node must run once, whatever order the
gradients in flight arrive in, and whether or not what a send sets off travelled with it. On both
paths: on the native one each part is the core's (native/csrc/local_pass.cpp) unless it captures or
makes a graph.
"""

import pytest
import torch

from tests.helpers.engine_sim import World

pytestmark = pytest.mark.usefixtures("path")  # tests/unit/conftest.py: every test on both paths

ORDERS = ("fifo", "lifo", "random")


class Count(torch.autograd.Function):
    """x * 1.5, counting how often its backward runs."""

    runs = 0

    @staticmethod
    def forward(ctx, x):
        return x * 1.5

    @staticmethod
    def backward(ctx, grad):
        Count.runs += 1
        return grad * 1.5


def leaf(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_()


# A scenario takes ``send(tensor, src, dest)`` and returns (roots on "t", {name: leaf}).
def chain(send):
    w = leaf(1, 4)
    y = send(Count.apply(w), "t", "a")
    z = send(torch.sin(y) * 2, "a", "b")
    return [send(z.exp(), "b", "t").sum()], {"w": w}


def round_trip_meets_itself(send):
    w = leaf(2, 3)
    y = Count.apply(w * 3)
    u = send(torch.sin(send(y, "t", "a")), "a", "t")
    return [(u * y).sum() + (w * w).sum()], {"w": w}


def diamond_below_a_send(send):
    w, x = leaf(3, 3), leaf(4, 3)
    f = Count.apply(w * send(x, "t", "a"))  # on a: f is sent on, and used with w directly
    back = send(torch.sin(send(f, "a", "b")), "b", "a")
    return [send((f * w).sum() + back.sum(), "a", "t")], {"w": w, "x": x}


def fan_out_fan_in(send):
    x = leaf(5, 6)
    h = Count.apply(x)
    a = send(torch.cos(send(h, "t", "a")), "a", "t")
    b = send(torch.tanh(send(h, "t", "b")), "b", "t")
    return [(a * b).sum() + h.sum()], {"x": x}


def one_leaf_four_ways(send):
    """w meets four gradients: used here before a send, sent twice, used after: the sum's order matters."""
    w = leaf(6, 5) * 1.0 + 0  # a non-leaf on purpose: its node sums the four
    w.retain_grad()
    base = leaf(6, 5)
    early = (base * 0.1).sum()
    a = send(send(base, "t", "a") * 1e3, "a", "t").sum()
    b = send(send(base, "t", "b") ** 2, "b", "t").sum()
    late = (base * 1e-3).sum()
    return [early + a + b + late], {"base": base}


def unreached_send_point(send):
    w, v = leaf(7, 3), leaf(8, 3)
    send(w * 2, "t", "a")  # sent, and its result dropped: never waited on
    return [(v * 3).sum()], {"w": w, "v": v}


def multiple_roots(send):
    w = leaf(9, 3)
    y = send(w * 2, "t", "a")
    r = send(y.sum(), "a", "t")
    return [r * 2, (w * w).sum()], {"w": w}


SCENARIOS = [chain, round_trip_meets_itself, diamond_below_a_send, fan_out_fan_in, one_leaf_four_ways,
             unreached_send_point, multiple_roots]


def distributed(scenario, create_graph=False, **world_options):
    world = World("t", "a", "b", **world_options)
    Count.runs = 0
    roots, leaves = scenario(world.send)
    world.leaves = leaves
    world.backward("t", roots, create_graph=create_graph)
    grads = {}
    for worker in world.workers.values():
        got = worker.grads(leaves.values())
        for name, tensor in leaves.items():
            if tensor in got:
                grads[name] = got[tensor]
    return grads, Count.runs, world


def local(scenario, create_graph=False):
    Count.runs = 0
    roots, leaves = scenario(lambda tensor, src, dest: tensor)
    names = list(leaves)
    got = torch.autograd.grad(roots, [leaves[n] for n in names], allow_unused=True, create_graph=create_graph)
    return {n: g for n, g in zip(names, got) if g is not None}, Count.runs


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_equals_single_process_autograd_bit_for_bit_and_runs_every_node_once(scenario, order):
    got, runs, _ = distributed(scenario, order=order)
    want, want_runs = local(scenario)
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), (name, (got[name] - want[name]).abs().max())
    assert runs == want_runs


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_where_activations_do_not_travel_the_root_asks_and_gets_the_same(scenario):
    got, runs, world = distributed(scenario, limit=0)
    want, want_runs = local(scenario)
    assert {n: g.tolist() for n, g in got.items()} == {n: g.tolist() for n, g in want.items()}
    assert runs == want_runs
    if world.pushes:
        assert world.unknown_asked


def test_an_unreached_send_point_takes_no_part():
    _, _, world = distributed(unreached_send_point)
    assert world.pushes == 0


def test_hooks_run_once_on_the_whole_gradient_as_in_local_autograd():
    def scenario(send, calls):
        w = leaf(10, 3)
        w.register_hook(lambda g: (calls.append("leaf"), g * 2)[1])
        w.register_post_accumulate_grad_hook(lambda p: calls.append(("post-accumulate", p.grad.clone())))
        h = w * 3
        h.register_hook(lambda g: (calls.append("tensor"), g * 10)[1])
        h.grad_fn.register_prehook(lambda grads: calls.append("pre"))
        h.grad_fn.register_hook(lambda inputs, outputs: calls.append("post"))
        y = send(send(h, "t", "a") * 2, "a", "t")
        return [(y + h).sum() + (w * w).sum()], {"w": w}

    world = World("t", "a", "b")
    calls = []
    roots, leaves = scenario(world.send, calls)
    world.backward("t", roots)
    got = world.workers["t"].grads()[leaves["w"]]
    local_calls = []
    roots, leaves = scenario(lambda t, s, d: t, local_calls)
    roots[0].backward()
    assert torch.equal(got, leaves["w"].grad)
    assert [c if isinstance(c, str) else c[0] for c in calls] == [c if isinstance(c, str) else c[0] for c in local_calls]
    assert torch.equal(calls[-1][1], got)  # the post-accumulate hook saw the context's gradient in .grad
    assert leaves["w"].grad is not None and roots[0].grad_fn is not None


def test_leaves_get_their_own_contiguous_tensors():
    world = World("t", "a", "b")
    a, b = leaf(11, 3), leaf(12, 4, 3)
    y = send_twice = world.send(a + 0, "t", "a")
    z = world.send(send_twice * 2, "a", "t")
    world.backward("t", [(z + a).sum() + b.sum()])
    grads = world.workers["t"].grads()
    assert grads[b].is_contiguous() and grads[b].stride() == (3, 1)  # b.sum()'s expanded gradient, copied
    assert grads[a].data_ptr() != grads[b].data_ptr()
    assert y is not None


def test_an_error_in_a_backward_function_fails_the_pass():
    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise ValueError("backward exploded on purpose")

    world = World("t", "a", "b")
    w = leaf(13, 3)
    y = world.send(Boom.apply(world.send(w, "t", "a")), "a", "t")
    with pytest.raises(ValueError, match="exploded on purpose"):
        world.backward("t", [y.sum()])


def test_a_second_pass_without_retain_graph_raises_torchs_error_and_with_it_accumulates():
    world = World("t", "a", "b")
    w = leaf(14, 3)
    y = world.send(torch.sin(world.send(w, "t", "a")), "a", "t")
    loss = y.sum()
    world.backward("t", [loss], retain_graph=True)
    first = world.workers["t"].grads()[w].clone()
    world.backward("t", [loss])
    assert torch.equal(world.workers["t"].grads()[w], first * 2)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        world.backward("t", [loss])


def _on_fresh_thread(fn, made_before=0):
    """``fn`` on a new thread (its own node counter, as a reader or standby thread has), after it made some nodes."""
    import threading

    out = []

    def body():
        z = torch.zeros(1, requires_grad=True)
        for _ in range(made_before):
            z = z * 1
        out.append(fn())

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return out[0]


@pytest.mark.parametrize("order", ORDERS)
def test_nodes_made_on_different_threads_sum_in_creation_order(order):
    """torch numbers nodes per thread; calls to one worker run on whichever thread read them. Three
    calls meet at one leaf: their sum must keep the order they were made in, not their threads' counts."""

    def scenario(send, run):
        w = torch.tensor([1.0], requires_grad=True)  # a parameter on "a"
        outs = []
        for i, value in enumerate([1.0, 1e-8, -1.0]):  # the sum's order shows: (-1 + 1e-8) + 1 != (1 - 1) + 1e-8
            x = torch.tensor([value], requires_grad=True)
            outs.append(run(i, lambda x=x: send((w * send(x, "t", "a")).sum(), "a", "t")))
        return [outs[0] + outs[1] + outs[2]], w

    world = World("t", "a", "b", order=order)
    roots, w = scenario(world.send, lambda i, call: _on_fresh_thread(call, made_before=10 if i == 0 else 0))
    world.backward("t", roots)
    local_roots, local_w = scenario(lambda tensor, src, dest: tensor, lambda i, call: call())
    local_roots[0].backward()
    assert torch.equal(world.workers["a"].grads()[w], local_w.grad)


def test_reached_asks_each_unknown_send_point_once_until_none_is_left():
    from distautograd.engine.activations import Activation, reached

    # 1 and 2 are known; 2 is unknown further on. Its holder names 3 (unknown, and 2 again: a diamond
    # brings it back); 3's holder names 4 and 2. Every id is asked once, in as many rounds as it takes.
    says = {2: ({3, 2}, {3, 2}), 3: ({4, 2}, {2})}
    rounds = []

    def ask(ids):
        rounds.append(ids)
        return [says[i] for i in ids]

    assert reached(Activation(frozenset({1, 2}), frozenset({2})), ask) == {1, 2, 3, 4}
    assert rounds == [[2], [3]]
    assert reached(Activation(frozenset({1}), frozenset()), ask) == {1} and rounds == [[2], [3]]  # nothing asked


def test_reached_stops_a_holder_that_keeps_naming_new_unknown_ids():
    from itertools import count

    from distautograd.engine.activations import Activation, reached

    fresh = count(100)
    with pytest.raises(RuntimeError, match="still unknown after 5 rounds"):
        reached(Activation(frozenset({1}), frozenset({1})), lambda ids: [({n := next(fresh)}, {n}) for _ in ids],
                most_rounds=5)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_captured_gradients_equal_autograd_grad_and_no_leaf_accumulates(scenario, order):
    """dist_autograd.grad: the leaves hand their gradients back, node by node or in waves alike."""
    got, runs, world = distributed(scenario, order=order, capture=True)
    want, want_runs = local(scenario)
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), (name, (got[name] - want[name]).abs().max())
    assert runs == want_runs
    assert all(leaf.grad is None for leaf in world.leaves.values())


@pytest.mark.parametrize("capture", [False, True], ids=["accumulated", "captured"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_with_create_graph_the_gradients_are_the_same_and_carry_a_graph(scenario, capture):
    """The graph of the gradients (create_graph) is made as local autograd makes it. The simulated sends
    cut the forward graph, so a second derivative across workers is tested end to end (tests/inprocess)."""
    got, runs, _ = distributed(scenario, create_graph=True, capture=capture)
    want, want_runs = local(scenario, create_graph=True)
    assert set(got) == set(want) and runs == want_runs
    for name in want:
        assert torch.equal(got[name].detach(), want[name].detach()), name
        assert got[name].requires_grad == want[name].requires_grad, name
