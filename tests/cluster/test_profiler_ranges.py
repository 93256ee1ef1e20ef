"""torch's profiler (torch.profiler.profile, kineto) sees each call and each backward pass as a range
named as torch names its own: rpc_sync#aten::add(w0 -> w1), dist_autograd's backward, the recv and
send nodes; read from prof.key_averages() in a real two-process world."""

from __future__ import annotations

import os

import torch

from tests.helpers.processes import run_spawned


def _profiled(rank: int, world_size: int, port: int) -> None:
    from distautograd import autograd as dist_autograd
    from distautograd import rpc

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rpc.init_rpc(f"w{rank}", rank=rank, world_size=world_size)
    if rank == 0:
        x = torch.ones(2, requires_grad=True)
        with torch.profiler.profile() as prof:
            rpc.rpc_sync("w1", torch.add, args=(x, 1))
            rpc.rpc_async("w1", torch.mul, args=(x, 2)).wait()
            rpc.remote("w1", torch.sub, args=(x, 1)).to_here()
            with dist_autograd.context() as context_id:
                y = rpc.rpc_sync("w1", torch.exp, args=(x,))
                dist_autograd.backward(context_id, [y.sum()])
        names = {event.key for event in prof.key_averages()}
        expected = {"rpc_sync#aten::add(w0 -> w1)", "rpc_async#aten::mul(w0 -> w1)", "rpc_remote#aten::sub(w0 -> w1)",
                    "rpc_sync#aten::exp(w0 -> w1)", "torch::distributed::autograd::backward",
                    "torch::distributed::autograd::RecvRpcBackward"}
        assert expected <= names, sorted(names)
    rpc.shutdown()


def test_torchs_profiler_shows_every_call_and_the_backward_as_torch_names_them():
    run_spawned(_profiled, nprocs=2)
