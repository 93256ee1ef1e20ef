"""create_graph=True across workers: gradients of gradients, against single-process torch, bit for bit.

Weights live on the workers that use them (tests/helpers/higher.py); the same program runs across
workers and then in this process alone.
"""

import pytest
import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc
from tests.helpers import higher
from tests.helpers import remote as remote_helpers
from tests.helpers.processes import poll_for

pytestmark = pytest.mark.usefixtures("trainer")
WORKERS = ("worker1", "worker2", "worker3")


def remote(name):
    return lambda fn, *args: rpc.rpc_sync(name, fn, args=args)


def local(fn, *args):
    return fn(*args)


def fresh_weights():
    higher.reset()
    for name in WORKERS:
        rpc.rpc_sync(name, higher.reset)


def x_leaf():
    return torch.linspace(-1.0, 1.2, 10, dtype=torch.float64).reshape(2, 5).requires_grad_()


def test_a_gradient_penalty_across_two_workers():
    """WGAN-GP style: the critic is split over worker1 and worker2; the penalty on ‖∂out/∂x‖ trains it."""
    fresh_weights()

    def critic(x, one, two):
        return one(higher.layer, two(higher.layer, x, 2), 1).sum()

    with dist_autograd.context() as context_id:
        x = x_leaf()
        out = critic(x, remote("worker1"), remote("worker2"))
        dist_autograd.backward(context_id, [out], create_graph=True)
        gx = dist_autograd.get_gradients(context_id)[x]
        assert gx.requires_grad, "with create_graph the gradient must be differentiable"
        penalty = (gx.norm() - 1) ** 2
        dist_autograd.backward(context_id, [penalty])
        got = {"x": dist_autograd.get_gradients(context_id)[x],
               "w1": rpc.rpc_sync("worker1", higher.weight_grad, args=(context_id, 1)),
               "w2": rpc.rpc_sync("worker2", higher.weight_grad, args=(context_id, 2))}

    x = x_leaf()
    out = critic(x, local, local)
    out.backward(create_graph=True)
    penalty = (x.grad.norm() - 1) ** 2
    penalty.backward()
    want = {"x": x.grad, "w1": higher.weight(1).grad, "w2": higher.weight(2).grad}
    for name in want:
        assert torch.equal(got[name].detach(), want[name].detach()), name


def test_a_gradient_penalty_through_nested_calls_sums_in_creation_order():
    """The critic on worker1 calls worker2 itself, three times a step (real, fake, the mix): each
    call waits for its nested one, so worker1 runs them on different threads, whose node counters
    say nothing about which node came first. Their gradients meet at worker1's weight: the sum must
    keep the order the calls were made in (engine.order), bit for bit as one process sums them."""
    fresh_weights()
    data = [torch.linspace(-1.0, 1.0, 10, dtype=torch.float64).reshape(2, 5) * s for s in (1.0, 0.3, -0.7)]

    def critic(x, call):
        return call(higher.layer_then, x, 1, "worker2", 2).sum() if call is not local else \
            higher.layer(higher.layer(x, 1), 2).sum()

    def loss_of(call, grad):
        real, fake, mix = data[0], data[1], (data[0] * 0.4 + data[1] * 0.6).requires_grad_()
        gx = grad(critic(mix, call), mix)
        return critic(fake, call) - critic(real, call) + 10.0 * ((gx.norm() - 1) ** 2)

    with dist_autograd.context() as context_id:
        loss = loss_of(remote("worker1"),
                       lambda out, x: dist_autograd.grad(context_id, [out], [x], create_graph=True)[0])
        dist_autograd.backward(context_id, [loss])
        got = [rpc.rpc_sync("worker1", higher.weight_grad, args=(context_id, 1)),
               rpc.rpc_sync("worker2", higher.weight_grad, args=(context_id, 2))]
    loss_of(local, lambda out, x: torch.autograd.grad(out, x, create_graph=True)[0]).backward()
    assert torch.equal(got[0], higher.weight(1).grad) and torch.equal(got[1], higher.weight(2).grad)


def test_a_hessian_vector_product_over_three_workers():
    fresh_weights()
    v = torch.linspace(0.5, -0.5, 10, dtype=torch.float64).reshape(2, 5)

    def model(x, call1, call2, call3):
        return (call3(higher.layer, call2(higher.layer, call1(higher.layer, x, 1), 2), 3) ** 2).sum()

    x = x_leaf()
    with dist_autograd.context() as first:
        loss = model(x, remote("worker1"), remote("worker2"), remote("worker3"))
        dist_autograd.backward(first, [loss], create_graph=True)
        g = dist_autograd.get_gradients(first)[x]
        # a new context (in a thread of its own: contexts do not nest in one thread), while the
        # first, whose send points the second order goes back through, is still open
        hv = _grad_in_new_context((g * v).sum(), x, create_graph=False)

    x = x_leaf()
    (g_local,) = torch.autograd.grad(model(x, local, local, local), x, create_graph=True)
    (hv_local,) = torch.autograd.grad((g_local * v).sum(), x)
    assert torch.equal(hv, hv_local)


def test_a_third_derivative_across_two_workers():
    x = torch.tensor([0.3, -1.1, 2.0], dtype=torch.float64, requires_grad=True)

    def f(x, call1, call2):
        return call2(higher.sin_of, call1(higher.cube, x)).sum()

    with dist_autograd.context() as c1:
        dist_autograd.backward(c1, [f(x, remote("worker1"), remote("worker2"))], create_graph=True)
        g1 = dist_autograd.get_gradients(c1)[x]
        c2, c3 = _another_context(), _another_context()  # each order in a context of its own
        try:
            dist_autograd.backward(c2, [g1.sum()], create_graph=True)
            g2 = dist_autograd.get_gradients(c2)[x]
            dist_autograd.backward(c3, [g2.sum()])
            g3 = dist_autograd.get_gradients(c3)[x]
        finally:
            dist_autograd._release_context(c3)
            dist_autograd._release_context(c2)

    (l1,) = torch.autograd.grad(f(x, local, local), x, create_graph=True)
    (l2,) = torch.autograd.grad(l1.sum(), x, create_graph=True)
    (l3,) = torch.autograd.grad(l2.sum(), x)
    assert torch.equal(g1.detach(), l1.detach())
    assert torch.equal(g2.detach(), l2.detach())
    assert torch.equal(g3, l3)


def _another_context() -> int:
    """A context that stays open until released, made in a thread of its own (contexts do not nest
    in one thread; backward and get_gradients take any open context's id)."""
    from tests.helpers.processes import outside_context

    return outside_context(lambda: dist_autograd._new_context()._context_id())


def _grad_in_new_context(root, x, create_graph):
    from tests.helpers.processes import outside_context

    def run():
        with dist_autograd.context() as context_id:
            dist_autograd.backward(context_id, [root], create_graph=create_graph)
            return dist_autograd.get_gradients(context_id)[x]

    return outside_context(run)


def test_contexts_and_graphs_of_both_orders_are_freed_when_the_contexts_end():
    x = x_leaf()
    with dist_autograd.context() as first:
        loss = remote("worker1")(higher.layer, x, 1).sum()
        dist_autograd.backward(first, [loss], create_graph=True)
        g = dist_autograd.get_gradients(first)[x]
        dist_autograd.backward(first, [(g ** 2).sum()])
    del loss, g
    for name in ("trainer", *WORKERS):  # other tests share these workers: look for this context only
        assert poll_for(lambda: first not in rpc.rpc_sync(name, remote_helpers.context_ids)), name
        assert poll_for(lambda: not [p for p in rpc.rpc_sync(name, remote_helpers.passes_in_flight) if p[0] == first]), name
        assert poll_for(lambda: rpc.rpc_sync(name, remote_helpers.debug_info)["num_current_backward_passes"] == 0), (
            name, rpc.rpc_sync(name, remote_helpers.passes_in_flight))


def test_every_node_of_both_orders_runs_once_and_an_unused_send_blocks_neither():
    for name in WORKERS:
        rpc.rpc_sync(name, higher.take_runs)
    x = torch.tensor([0.5, -1.5], dtype=torch.float64, requires_grad=True)
    with dist_autograd.context() as first:
        rpc.rpc_sync("worker3", higher.layer, args=(torch.ones(1, 5, dtype=torch.float64, requires_grad=True), 4))
        y = rpc.rpc_sync("worker1", higher.doubled_squared, args=(x,))  # the line above's result is dropped
        z = rpc.rpc_sync("worker2", higher.doubled_squared, args=(y,))
        dist_autograd.backward(first, [z.sum()], create_graph=True)
        g = dist_autograd.get_gradients(first)[x]
        second = _another_context()
        try:
            dist_autograd.backward(second, [(g * g).sum()])
            gg = dist_autograd.get_gradients(second)[x]
        finally:
            dist_autograd._release_context(second)
    got = [rpc.rpc_sync(name, higher.take_runs) for name in ("worker1", "worker2")]

    higher.take_runs()
    (l1,) = torch.autograd.grad(higher.doubled_squared(higher.doubled_squared(x)).sum(), x, create_graph=True)
    (l2,) = torch.autograd.grad((l1 * l1).sum(), x)
    assert torch.equal(g.detach(), l1.detach()) and torch.equal(gg, l2)
    local = higher.take_runs()
    distributed = {k: sum(r[k] for r in got) for k in local}
    assert distributed == local, (distributed, local)
    assert local["second"] > 0, "the second order must have run the counting node"


def test_grad_returns_without_accumulating_as_torch_autograd_grad_and_makes_a_wgan_gp_penalty():
    fresh_weights()

    def critic(x, one, two):
        return one(higher.layer, two(higher.layer, x, 2), 1)

    x = x_leaf()
    with dist_autograd.context() as context_id:
        (gx,) = dist_autograd.grad(context_id, [critic(x, remote("worker1"), remote("worker2")).sum()], [x],
                                   create_graph=True)
        for name, seed in (("worker1", 1), ("worker2", 2)):  # nothing accumulated anywhere
            assert rpc.rpc_sync(name, higher.weight_grad, args=(context_id, seed)) is None
        assert dist_autograd.get_gradients(context_id) == {}
        penalty = ((gx.norm(2, dim=1) - 1) ** 2).mean()
        loss = critic(x * 0.5, remote("worker1"), remote("worker2")).mean() + 10 * penalty
        dist_autograd.backward(context_id, [loss])
        got = [rpc.rpc_sync(name, higher.weight_grad, args=(context_id, seed))
               for name, seed in (("worker1", 1), ("worker2", 2))]

    x = x_leaf()
    (lx,) = torch.autograd.grad(critic(x, local, local).sum(), [x], create_graph=True)
    assert torch.equal(gx.detach(), lx.detach())
    penalty = ((lx.norm(2, dim=1) - 1) ** 2).mean()
    (critic(x * 0.5, local, local).mean() + 10 * penalty).backward()
    assert torch.equal(got[0], higher.weight(1).grad) and torch.equal(got[1], higher.weight(2).grad)


def test_grad_with_grad_outputs_and_unused_inputs_as_torch():
    x, unused = x_leaf(), torch.ones(3, dtype=torch.float64, requires_grad=True)
    v = torch.full((2, 5), 0.25, dtype=torch.float64)
    with dist_autograd.context() as context_id:
        out = remote("worker3")(higher.cube, x)
        with pytest.raises(RuntimeError, match="appears to not have been used in the graph"):
            dist_autograd.grad(context_id, [out], [x, unused], grad_outputs=[v], retain_graph=True)
        gx, none = dist_autograd.grad(context_id, [out], [x, unused], grad_outputs=[v], allow_unused=True)
    assert none is None
    assert torch.equal(gx, torch.autograd.grad(higher.cube(x), x, grad_outputs=v)[0])
