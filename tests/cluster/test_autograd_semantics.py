"""torch.distributed.autograd semantics: contexts, roots, accumulation, retain_graph, errors, cleanup."""

import threading

import pytest
import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc
from distautograd.encoding import pickling
from distautograd.ids import rank_of
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.current import get as current_agent
from tests.helpers import remote
from tests.helpers.processes import outside_context, poll_for
from tests.helpers.socket_peer import RawSocketPeer

pytestmark = pytest.mark.usefixtures("trainer")
WORKERS = ("worker1", "worker2", "worker3")


def contexts_on(name):
    return outside_context(rpc.rpc_sync, name, remote.context_ids)


def test_context_ids_carry_the_creator_rank_and_contexts_are_per_thread(trainer):
    with dist_autograd.context() as context_id:
        assert isinstance(context_id, int) and rank_of(context_id) == trainer.id
        with pytest.raises(RuntimeError, match="Already have an autograd context id for this thread"):
            dist_autograd.context().__enter__()
        seen = []

        def other_thread():
            with dist_autograd.context() as other:
                seen.append(other)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert seen and seen[0] != context_id


def test_the_receiver_makes_its_side_on_first_use_and_everyone_frees_it_on_exit():
    w = torch.randn(3, requires_grad=True)
    with dist_autograd.context() as context_id:
        rpc.rpc_sync("worker1", remote.nested_add, args=("worker2", w, 1))
        assert context_id in contexts_on("worker1")
        assert context_id in contexts_on("worker2")  # reached through worker1
        assert context_id not in contexts_on("worker3")
    for name in ("worker1", "worker2"):
        assert poll_for(lambda: context_id not in contexts_on(name)), name


def test_a_context_that_only_named_the_callee_is_freed_there_too():
    """A call or a fetch without a tensor that requires grad still makes the context on the callee
    (its own calls carry it on); ending the context must free it there as well."""
    with dist_autograd.context() as context_id:
        assert rpc.rpc_sync("worker1", remote.add, args=(2, 3)) == 5
        rref = rpc.remote("worker2", torch.ones, args=(2,))
        assert torch.equal(rref.to_here(), torch.ones(2))
        assert context_id in contexts_on("worker1")
        assert context_id in contexts_on("worker2")
    for name in ("worker1", "worker2"):
        assert poll_for(lambda: context_id not in contexts_on(name)), name


def test_gradients_that_arrive_after_a_pass_was_aborted_do_not_revive_it():
    """A push still on its way when its pass is aborted is dropped: it must not make the pass again
    and leave it waiting for gradients that never come (until the context ends)."""
    path = current_agent().world.entry(rpc.get_worker_info("worker1").id).unix_path
    with dist_autograd.context() as context_id:
        rpc.rpc_sync("worker1", remote.add, args=(torch.ones(2, requires_grad=True), 1))
        peer = RawSocketPeer(path)
        try:
            def passes():
                return outside_context(rpc.rpc_sync, "worker1", remote.passes_in_flight)

            push = pb.Request(push_gradients=pb.PushGradients(context_id=context_id, pass_id=77, message_ids=[],
                                                               gradients=pb.Value(pickle=pickling.dumps([], lambda o: None)),
                                                               root=60000))
            peer.send_frame(pb.Frame(id=0, request=push))
            assert poll_for(lambda: passes() == [(context_id, 77, 60000)]), passes()
            peer.send_frame(pb.Frame(id=0, request=pb.Request(abort_backward=pb.AbortBackward(
                context_id=context_id, pass_id=77))))
            assert poll_for(lambda: passes() == []), passes()
            peer.send_frame(pb.Frame(id=0, request=push))  # late
            push.push_gradients.pass_id, push.push_gradients.root = 78, rpc.get_worker_info("worker1").id
            peer.send_frame(pb.Frame(id=0, request=push))  # says worker1 drives a pass it never started
            assert rpc.rpc_sync("worker1", remote.add, args=(2, 3)) == 5  # read after the pushes
            assert passes() == []
        finally:
            peer.close()


def test_a_received_tensor_can_be_modified_in_place_and_the_gradient_counts_it():
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    with dist_autograd.context() as context_id:
        out = rpc.rpc_sync("worker1", remote.doubled_in_place_then_tripled, args=(w,))
        dist_autograd.backward(context_id, [out.sum()])
        got = dist_autograd.get_gradients(context_id)[w]
    local = w.detach().clone().requires_grad_()
    received = local.clone()  # what the recv node hands out: a non-leaf that requires grad
    received.mul_(2)
    (received * 3).sum().backward()
    assert torch.equal(out, (received * 3).detach())
    assert torch.equal(got, local.grad) and torch.equal(got, torch.full((3,), 6.0)), got


def test_only_tensors_that_require_grad_get_send_points():
    with dist_autograd.context() as context_id:
        rpc.rpc_sync("worker1", remote.echo, args=([torch.ones(2), torch.ones(2, requires_grad=True)],))
        ctx = current_agent().contexts.get(context_id)
        assert len(ctx.sends) == 1  # the argument that requires grad
        assert len(ctx.recvs) == 1  # and it came back


def test_invalid_backward_arguments_raise_what_torch_raises():
    """The types and message fragments torch's own tests check (test_backward_invalid_args)."""
    with dist_autograd.context() as context_id:
        with pytest.raises(TypeError, match="incompatible function arguments"):
            dist_autograd.backward(context_id, None)
        with pytest.raises(TypeError, match="incompatible function arguments"):
            dist_autograd.backward(None, None)
        with pytest.raises(RuntimeError, match="No tensors provided for gradient computation"):
            dist_autograd.backward(context_id, [])
        with pytest.raises(RuntimeError, match="requires_grad not set on"):
            dist_autograd.backward(context_id, [torch.rand(3, 3)])
        with pytest.raises(RuntimeError, match="is not a scalar, all roots need to be scalar"):
            dist_autograd.backward(context_id, [torch.rand(3, 3, requires_grad=True)])
        with pytest.raises(RuntimeError, match="does not have a valid gradient function"):
            dist_autograd.backward(context_id, [torch.rand(1, requires_grad=True)])
    with pytest.raises(RuntimeError, match="Could not find autograd context"):
        dist_autograd.backward(context_id, [torch.ones((), requires_grad=True) * 2])
    with pytest.raises(RuntimeError, match="Could not find autograd context"):
        dist_autograd.get_gradients(context_id)


def test_passes_accumulate_in_the_context_and_never_touch_grad():
    w = torch.randn(4, requires_grad=True)
    with dist_autograd.context() as context_id:
        loss = rpc.rpc_sync("worker1", torch.exp, args=(w,)).sum()
        dist_autograd.backward(context_id, [loss], retain_graph=True)
        once = dist_autograd.get_gradients(context_id)[w].clone()
        dist_autograd.backward(context_id, [loss], retain_graph=True)
        twice = dist_autograd.get_gradients(context_id)[w]
    assert torch.equal(once, w.detach().exp())
    assert torch.equal(twice, once + once)
    assert w.grad is None


def test_a_second_pass_over_a_freed_graph_says_to_retain_it():
    w = torch.randn(4, requires_grad=True)
    with dist_autograd.context() as context_id:
        loss = rpc.rpc_sync("worker2", torch.exp, args=(w,)).sum()
        dist_autograd.backward(context_id, [loss])
        with pytest.raises(RuntimeError, match="retain_graph=True"):
            dist_autograd.backward(context_id, [loss])


def test_an_error_in_a_remote_backward_function_fails_the_pass_naming_the_worker():
    w = torch.randn(3, requires_grad=True)
    with dist_autograd.context() as context_id:
        y = rpc.rpc_sync("worker3", remote.fail_in_backward, args=(w,))
        z = rpc.rpc_sync("worker1", torch.exp, args=(y,))
        with pytest.raises(RuntimeError, match=r"Error on Node [0-9]+: backward exploded on purpose") as err:
            dist_autograd.backward(context_id, [z.sum()])
        assert "worker3" in str(err.value) and isinstance(err.value.__cause__, ValueError)
    for name in WORKERS:
        assert poll_for(lambda: rpc.rpc_sync(name, remote.debug_info)["num_current_backward_passes"] == 0)


def test_a_send_point_the_roots_cannot_reach_is_skipped_not_waited_on():
    w = torch.randn(3, requires_grad=True)
    with dist_autograd.context() as context_id:
        rpc.rpc_sync("worker1", torch.exp, args=(w,))  # result dropped: its send point is unreachable
        kept = rpc.rpc_sync("worker2", torch.exp, args=(w,))
        dist_autograd.backward(context_id, [kept.sum()])
        assert torch.equal(dist_autograd.get_gradients(context_id)[w], w.detach().exp())


def test_local_only_graphs_need_no_other_worker():
    w = torch.randn(3, requires_grad=True)
    with dist_autograd.context() as context_id:
        dist_autograd.backward(context_id, [(w * w).sum()])
        assert torch.equal(dist_autograd.get_gradients(context_id)[w], 2 * w.detach())


def test_the_coordinator_keeps_the_context_record(cluster, capsys):
    from distautograd.cli import main

    w = torch.randn(3, requires_grad=True)
    with dist_autograd.context() as context_id:
        loss = rpc.rpc_sync("worker2", remote.ps_forward, args=(torch.arange(8.0, requires_grad=True),))
        loss = loss + rpc.rpc_sync("worker1", torch.exp, args=(w,)).sum()
        dist_autograd.backward(context_id, [loss], retain_graph=True)
        dist_autograd.backward(context_id, [loss])
        assert main(["status", "--coordinator", cluster.coordinator]) == 0
        out = capsys.readouterr().out
        line = next(line for line in out.splitlines() if f"{context_id:#x}" in line)
        w2 = cluster.worker("worker2").rank
        assert "passes 2 (0 in flight)" in line
        assert f"rank {w2}: 1" in line  # the parameter server's weight got a gradient
        trainer = rpc.get_worker_info().id
        assert f"rank {trainer}: 2" in line  # w and the arange input


def test_rref_backward_distributed_and_local():
    w = torch.randn(8, requires_grad=True)
    with dist_autograd.context() as context_id:
        rref = rpc.remote("worker1", remote.ps_forward, args=(w,))
        rref.backward(context_id)  # a distributed pass rooted at the value on worker1
        assert torch.equal(dist_autograd.get_gradients(context_id)[w], rpc.rpc_sync("worker1", remote.ps_weight))
        assert torch.equal(outside_context(rpc.rpc_sync, "worker1", remote.ps_weight_grad, (context_id,)), w.detach())
    rref = rpc.remote("worker2", remote.ps_forward, args=(torch.full((8,), 2.0),))
    with pytest.raises(RuntimeError, match="User RRefs require 'dist_autograd_ctx_id' to be specified"):
        rref.backward()  # as torch: without a context only the owner may
    # On the owner, no context is a local backward into .grad, as torch does
    assert torch.equal(rpc.rpc_sync("worker2", remote.owner_rref_backward, args=(torch.full((8,), 2.0),)),
                       torch.full((8,), 2.0))


def test_zero_gradients_travel_as_a_shape_not_as_tensors(monkeypatch):
    """A gradient of all zeros crosses as dtype and shape only, and arrives as zeros all the same: every
    frame this process reads during the pass is far below the gradient's 4,000 bytes (counted as the
    transport counts received bytes, whichever path runs the push: a reading thread already waiting for
    the push runs the code it started with, so the count is caught where it looks its function up), and
    where the codec decodes the push, its one gradient says zeros, with no attachment."""
    from distautograd import metrics
    from distautograd.runtime.codec import Codec
    from distautograd.transport import sockets

    decoded, sizes = [], []
    decode = Codec.decode

    def decoding(self, value, attachments, *args, **kwargs):
        read = pb.Value.FromString(value) if isinstance(value, bytes) else value  # a push the core read
        decoded.append((len(attachments), [meta.zeros for meta in read.tensors]))
        return decode(self, value, attachments, *args, **kwargs)

    w = torch.randn(1000, requires_grad=True)
    with dist_autograd.context() as context_id:
        y = rpc.rpc_sync("worker2", torch.relu, args=(w - 1e6,))  # all off: zero gradient back to w
        monkeypatch.setattr(Codec, "decode", decoding)
        monkeypatch.setattr(metrics, "ON", True)
        monkeypatch.setattr(sockets, "_count", lambda counter, kind, streamed, shared: sizes.append(streamed + shared))
        dist_autograd.backward(context_id, [y.sum()])
        grads = dist_autograd.get_gradients(context_id)
    assert torch.equal(grads[w], torch.zeros(1000))
    assert sizes and max(sizes) < 1000, sizes
    assert decoded in ([], [(0, [True])]), decoded


def test_no_round_before_gradients_move_what_a_send_sets_off_travels_with_it(monkeypatch):
    """The reply of a nested chain carries which send points its gradient sets off (worker1's and,
    through it, worker2's), so the caller knows the whole pass from its own graph and asks nobody."""
    from distautograd.runtime.reach import Reach

    asked = []
    original = Reach._reach
    monkeypatch.setattr(Reach, "_reach", lambda self, *args: asked.append(args) or original(self, *args))
    w = torch.randn(3, requires_grad=True)
    with dist_autograd.context() as context_id:
        y = rpc.rpc_sync("worker1", remote.nested_add, args=("worker2", w, 1))
        ctx = current_agent().contexts.get(context_id)
        (recv,) = ctx.recvs.values()
        worker1, worker2 = (rpc.get_worker_info(n).id for n in ("worker1", "worker2"))
        assert not recv.activation.unknown
        assert {rank_of(m) for m in recv.activation.ids} == {trainer_rank(), worker1, worker2}
        dist_autograd.backward(context_id, [y.sum()])
        assert torch.equal(dist_autograd.get_gradients(context_id)[w], torch.ones(3))
    assert not asked


def trainer_rank():
    return rpc.get_worker_info().id
