"""The rest of torch's RPC surface that programs and torch's own tests use, against the session cluster.

Each test says what torch does (checked against torch 2.13's torch.distributed.rpc) and checks
distautograd does the same; gradients are compared bit for bit with single-process autograd.
"""

import pytest
import torch
from torch.autograd.graph import get_gradient_edge

from distautograd import autograd as dist_autograd
from distautograd import rpc
from distautograd.errors import DeadlineExceeded
from distautograd.optim import DistributedOptimizer
from tests.helpers import remote
from tests.helpers.processes import outside_context

pytestmark = pytest.mark.usefixtures("trainer")


def test_builtin_operators_on_scalars_return_what_torch_rpc_returns():
    assert rpc.rpc_sync("worker1", torch.add, args=(1, 1)) == 2
    assert type(rpc.rpc_sync("worker1", torch.add, args=(1, 1))) is int
    assert torch.equal(rpc.rpc_sync("worker1", torch.add, args=(torch.ones(2), 1)), torch.full((2,), 2.0))


def test_torchscript_functions_as_targets_and_results_with_gradients():
    x, y = torch.linspace(0, 1, 5).requires_grad_(), torch.full((5,), 3.0)
    with dist_autograd.context() as context_id:
        out = rpc.rpc_sync("worker1", remote.scripted_mul_add, args=(x, y))
        dist_autograd.backward(context_id, [out.sum()])
        got = dist_autograd.get_gradients(context_id)[x]
    assert torch.equal(out, remote.scripted_mul_add(x, y))
    assert torch.equal(got, torch.autograd.grad(remote.scripted_mul_add(x, y).sum(), x)[0])
    fn = rpc.rpc_sync("worker1", remote.get_scripted)
    assert isinstance(fn, torch.jit.ScriptFunction) and torch.equal(fn(y, y), y * y + 1)


def test_bound_methods_classmethods_and_staticmethods_as_targets():
    assert rpc.rpc_sync("worker1", remote.Shape(2, 3).area) == 6
    assert rpc.rpc_sync("worker1", remote.Shape.square_area, args=(4,)) == 16
    assert torch.equal(rpc.rpc_sync("worker1", remote.Shape.scaled, args=(torch.ones(2), 3)), torch.full((2,), 3.0))
    assert rpc.rpc_async("worker2", remote.Shape(3, 5).area).wait() == 15


def test_a_reply_read_under_no_grad_records_no_recv_as_torchs_does():
    """torch 2.13 (checked with torch.distributed.rpc, two processes, the same calls): a call made under
    no_grad still records its send (the callee's argument has a recv node there), but torch reads the
    reply under the caller's grad mode, so its tensors come back requiring grad with no grad_fn, from
    rpc_sync, rpc_async and to_here alike; an RRef made under no_grad and fetched outside it records
    the recv, and one made outside and fetched under it does not."""
    x = torch.ones(3, requires_grad=True)
    with dist_autograd.context():
        with torch.no_grad():
            seen = rpc.rpc_sync("worker1", remote.what_the_callee_sees, args=(x,))
            replies = [rpc.rpc_sync("worker1", torch.exp, args=(x,)), rpc.rpc_async("worker1", torch.exp, args=(x,)).wait(),
                       rpc.remote("worker1", torch.exp, args=(x,)).to_here()]
            made_here = rpc.remote("worker1", torch.exp, args=(x,))
        made_outside = rpc.remote("worker1", torch.exp, args=(x,))
        with torch.no_grad():
            replies.append(made_outside.to_here())
        fetched_outside = made_here.to_here()
        recorded = rpc.rpc_sync("worker1", torch.exp, args=(x,))
    assert seen == (True, True, True)
    for reply in replies:
        assert reply.requires_grad and reply.grad_fn is None and torch.equal(reply, torch.exp(x.detach()))
    assert fetched_outside.grad_fn is not None and recorded.grad_fn is not None


def sparse_examples():
    coo = torch.sparse_coo_tensor(torch.tensor([[0, 2, 0, 3], [1, 0, 1, 2]]), torch.tensor([1.5, -2.0, 4.0, 0.25]),
                                  (4, 3))  # uncoalesced: (0, 1) twice
    return {
        "coo uncoalesced": coo,
        "coo coalesced": coo.coalesce(),
        "csr": torch.tensor([[0.0, 1.0, 0.0], [2.5, 0.0, -3.0]]).to_sparse_csr(),
        "csc": torch.tensor([[0.0, 1.0, 0.0], [2.5, 0.0, -3.0]]).to_sparse_csc(),
        "coo of doubles with a dense part": torch.randn(3, 2, dtype=torch.float64).to_sparse(1),
    }


@pytest.mark.parametrize("name", list(sparse_examples()))
def test_sparse_tensors_travel_bit_exact(name):
    sent = sparse_examples()[name]
    back = rpc.rpc_sync("worker1", remote.echo, args=(sent,))
    assert back.layout == sent.layout and back.dtype == sent.dtype and back.shape == sent.shape
    if sent.layout == torch.sparse_coo:
        assert back.is_coalesced() == sent.is_coalesced()
        assert torch.equal(back._indices(), sent._indices()) and torch.equal(back._values(), sent._values())
    else:
        for part in ("crow_indices", "col_indices") if sent.layout == torch.sparse_csr else ("ccol_indices", "row_indices"):
            assert torch.equal(getattr(back, part)(), getattr(sent, part)())
        assert torch.equal(back.values(), sent.values())


def test_sparse_embedding_gradients_accumulate_in_the_context_as_torch_accumulates_them():
    """The gradient stays sparse and sums as torch's does. The order of its uncoalesced entries
    follows the order torch's engine ran the lookups' backward in, which on the owner depends on
    the threads the lookups ran on (as in torch.distributed.autograd): compare coalesced."""
    first, second = torch.tensor([1, 4, 4]), torch.tensor([4, 9])
    with dist_autograd.context() as context_id:
        a = rpc.rpc_sync("worker1", remote.sparse_lookup, args=(first,))
        b = rpc.rpc_sync("worker1", remote.sparse_lookup, args=(second,))
        dist_autograd.backward(context_id, [(a * 2).sum() + b.sum()])
        c = rpc.rpc_sync("worker1", remote.sparse_lookup, args=(second,))
        dist_autograd.backward(context_id, [c.sum()])  # a second pass adds to the first
        got = rpc.rpc_sync("worker1", remote.sparse_table_grad, args=(context_id,))
    table = remote._make_sparse_table()
    ((table(first) * 2).sum() + table(second).sum()).backward()
    table(second).sum().backward()
    want = table.weight.grad
    assert got.layout == torch.sparse_coo and want.layout == torch.sparse_coo
    got, want = got.coalesce(), want.coalesce()
    assert torch.equal(got.indices(), want.indices()) and torch.equal(got.values(), want.values())


class TestRemoteModule:
    def test_forward_parameters_and_optimizer_match_a_local_module(self):
        from distautograd.nn import RemoteModule

        module = RemoteModule("worker1/cpu", torch.nn.Linear, args=(4, 2))
        weight, bias = [p.to_here() for p in module.remote_parameters()]
        local = torch.nn.Linear(4, 2)
        with torch.no_grad():
            local.weight.copy_(weight)
            local.bias.copy_(bias)
        x = torch.linspace(-1, 1, 12).reshape(3, 4)
        with dist_autograd.context() as context_id:
            loss = (module(x) * 2).sum() + module.forward_async(x).wait().sum()
            dist_autograd.backward(context_id, [loss])
            opt = DistributedOptimizer(torch.optim.SGD, module.remote_parameters(), lr=0.5)
            opt.step(context_id)
        ((local(x) * 2).sum() + local(x).sum()).backward()
        torch.optim.SGD(local.parameters(), lr=0.5).step()
        after = [p.to_here() for p in module.remote_parameters()]
        assert torch.equal(after[0], local.weight.detach()) and torch.equal(after[1], local.bias.detach())

    def test_module_rref_train_eval_and_torch_errors(self):
        from distautograd.nn import RemoteModule

        module = RemoteModule("rank:1/cpu", torch.nn.Dropout, args=(0.5,))  # rank 1 is worker1 or later
        rref = module.get_module_rref()
        assert rref.owner().name == rpc.get_worker_info(1).name
        module.eval()
        assert torch.equal(module(torch.ones(100)), torch.ones(100))
        module.train()
        assert not torch.equal(module(torch.ones(100)), torch.ones(100))
        with pytest.raises(ValueError, match="Could not parse remote_device"):
            RemoteModule("rank:x/cpu", torch.nn.Linear, args=(1, 1))
        with pytest.raises(ValueError, match="not supported"):
            module.cuda()
        with pytest.raises(ValueError, match="cuda"):
            RemoteModule("worker1/cuda:0", torch.nn.Linear, args=(1, 1))


def test_rpc_timeout_and_backend_options_as_torch():
    assert rpc.get_rpc_timeout() == 30
    rpc._set_rpc_timeout(0.5)
    try:
        with pytest.raises(DeadlineExceeded, match="timeout of 0.5 s"):
            rpc.rpc_sync("worker1", remote.sleep, args=(2,))
    finally:
        rpc._set_rpc_timeout(30)
    assert rpc.get_rpc_timeout() == 30
    options = rpc.TensorPipeRpcBackendOptions(device_maps={"worker1": {"cpu": "cpu"}}, devices=["cpu"])
    options.set_device_map("worker2", {"cpu": "cpu"})
    with pytest.raises(ValueError, match="CPU"):
        rpc.TensorPipeRpcBackendOptions(device_maps={"worker1": {"cuda:0": "cuda:1"}})
    with pytest.raises(ValueError, match="CPU"):
        options.set_devices(["cuda:0"])


def test_all_gather_among_named_workers():
    names = ["trainer", "worker1", "worker2"]
    futures = [rpc.rpc_async(w, remote.gather_among, args=(names, f"from {w}")) for w in names[1:]]
    mine = rpc.api._all_gather("from trainer", worker_names=names)
    want = {n: f"from {n}" for n in names}
    assert mine == want and all(f.wait() == want for f in futures)
    again = [rpc.rpc_async(w, remote.gather_among, args=(names, 2)) for w in names[1:]]
    assert rpc.api._all_gather(2, worker_names=names) == dict.fromkeys(names, 2)
    assert all(f.wait() == dict.fromkeys(names, 2) for f in again)


def test_rref_type_blocking_and_not():
    rref = rpc.remote("worker1", remote.Counter, args=(1,))
    assert rref._get_type() is remote.Counter
    assert rref._get_type(blocking=False).wait() is remote.Counter
    assert rpc.RRef(torch.ones(1))._get_type() is torch.Tensor


def test_rref_proxies_fail_on_missing_methods_where_torch_fails():
    rref = rpc.remote("worker1", remote.Counter, args=(1,))
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        rref.rpc_sync().missing()
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        rref.rpc_async().missing().wait()
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        rref.remote().missing()
    assert rref.remote().increment(2).to_here() == 3


def test_rref_backward_errors_as_torch():
    rref = rpc.remote("worker1", remote.Counter, args=(1,))
    with dist_autograd.context() as context_id:
        with pytest.raises(RuntimeError, match="RRef should contain a tensor for .backward()"):
            rref.backward(context_id)
    with pytest.raises(RuntimeError, match="User RRefs require 'dist_autograd_ctx_id' to be specified"):
        rref.backward()


def test_context_internals_torch_tests_use():
    t1, t2 = torch.ones(2, 2, requires_grad=True), torch.full((2, 2), 2.0, requires_grad=True)
    with dist_autograd.context() as context_id:
        with pytest.raises(RuntimeError, match="Already have an autograd context id for this thread"):
            with dist_autograd.context():
                pass
        ret = rpc.rpc_sync("worker1", torch.add, args=(t1, t2))
        assert rpc.rpc_sync("worker2", torch.add, args=(1, 1)) == 2  # no tensor that requires grad: known too
        ctx = dist_autograd._current_context()
        assert ctx._context_id() == context_id
        assert dist_autograd._retrieve_context(context_id) is ctx
        assert len(ctx._send_functions()) == 1 and len(ctx._recv_functions()) == 1  # one message each way
        (send,) = ctx._send_functions().values()
        assert send.name() == "torch::distributed::autograd::SendRpcBackward"
        assert [node for node, _ in send.next_functions] == [get_gradient_edge(t).node for t in (t1, t2)]
        assert list(ctx._recv_functions().values()) == [ret.grad_fn]
        worker1, worker2 = rpc.get_worker_info("worker1").id, rpc.get_worker_info("worker2").id
        assert ctx._known_worker_ids() == {worker1, worker2}  # as torch's test_worker_ids_recorded
        assert context_id <= dist_autograd._get_max_id()
    with pytest.raises(RuntimeError, match="Could not find autograd context with id"):
        dist_autograd._retrieve_context(context_id)
    with pytest.raises(RuntimeError, match="doesn't have a valid autograd context"):
        dist_autograd._current_context()


def test_new_and_release_context_without_a_with_block():
    def run():
        ctx = dist_autograd._new_context()
        context_id = ctx._context_id()
        loss = rpc.rpc_sync("worker1", torch.mul, args=(torch.ones(3, requires_grad=True), 2.0)).sum()
        dist_autograd.backward(context_id, [loss])
        dist_autograd._release_context(context_id)
        try:
            dist_autograd._retrieve_context(context_id)
        except RuntimeError:
            return True
        return False

    assert outside_context(run)
