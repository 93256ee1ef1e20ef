"""Programs for torch.multiprocessing.spawn: each rank runs one of these, as a user's training script would."""

from __future__ import annotations

import os
import time

import torch

from distautograd import rpc
from tests.helpers import remote


def init(rank: int, world_size: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    options = rpc.TensorPipeRpcBackendOptions(num_worker_threads=8, rpc_timeout=30, allowed_modules=["tests"])
    rpc.init_rpc(f"worker{rank}", backend=rpc.BackendType.TENSORPIPE, rank=rank, world_size=world_size,
                 rpc_backend_options=options)


def every_verb(rank: int, world_size: int, port: int) -> None:
    init(rank, world_size, port)
    me = rpc.get_worker_info()
    assert me == rpc.WorkerInfo(f"worker{rank}", rank)
    nxt, after = (rank + 1) % world_size, (rank + 2) % world_size
    assert rpc.rpc_sync(f"worker{nxt}", remote.add, args=(rank, 1)) == rank + 1
    assert torch.equal(rpc.rpc_async(nxt, torch.mul, args=(torch.ones(2), rank)).wait(), torch.full((2,), float(rank)))
    counter = rpc.remote(rpc.get_worker_info(f"worker{nxt}"), remote.Counter, args=(rank,))
    assert counter.rpc_sync().increment() == rank + 1
    assert counter.rpc_sync().get() == rank + 1
    assert rpc.rpc_sync(nxt, remote.nested_add, args=(f"worker{after}", 1, 2)) == 3
    assert rpc.rpc_sync(me, remote.add, args=(1, 1)) == 2
    x = torch.ones(2)
    assert torch.equal(rpc.rpc_sync(nxt, remote.async_add_chained, args=(f"worker{after}", x, x, x)), 3 * x)
    rpc.shutdown()


def graceful_shutdown_serves_late_calls(rank: int, world_size: int, port: int) -> None:
    """Rank 1 calls shutdown at once; rank 0's later calls to it must still be served."""
    init(rank, world_size, port)
    if rank == 0:
        time.sleep(1.0)
        fut = rpc.rpc_async("worker1", remote.sleep, args=(0.5,))
        assert rpc.rpc_sync("worker1", remote.add, args=(1, 2)) == 3
        assert fut.wait() == 0.5
    rpc.shutdown(graceful=True)


def _master(port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)


def _options(**kw) -> rpc.TensorPipeRpcBackendOptions:
    return rpc.TensorPipeRpcBackendOptions(num_worker_threads=8, rpc_timeout=30, allowed_modules=["tests"], **kw)


def process_group_then_rpc_on_one_port(rank: int, world_size: int, port: int) -> None:
    """init_process_group('gloo', env://) and then init_rpc on the same MASTER_PORT, as torch allows."""
    import torch.distributed as dist

    _master(port)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size)
    rpc.init_rpc(f"worker{rank}", rank=rank, world_size=world_size, rpc_backend_options=_options())
    t = torch.full((2,), float(rank + 1))
    dist.all_reduce(t)
    assert torch.equal(t, torch.full((2,), float(sum(range(1, world_size + 1)))))
    peer = f"worker{(rank + 1) % world_size}"
    assert rpc.rpc_sync(peer, remote.add, args=(rank, 10)) == rank + 10
    rpc.shutdown()
    dist.destroy_process_group()


def process_group_then_rpc_on_one_tcp_address(rank: int, world_size: int, port: int) -> None:
    import torch.distributed as dist

    address = f"tcp://127.0.0.1:{port}"
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size)
    rpc.init_rpc(f"worker{rank}", rank=rank, world_size=world_size, rpc_backend_options=_options(init_method=address))
    assert rpc.rpc_sync(f"worker{(rank + 1) % world_size}", remote.add, args=(rank, 1)) == rank + 1
    rpc.shutdown()
    dist.destroy_process_group()


def rpc_through_a_file(rank: int, world_size: int, port: int) -> None:
    """init_method='file://...' with no MASTER_ADDR / MASTER_PORT at all, twice in a row."""
    path = os.path.join(os.environ["DISTAUTOGRAD_TEST_TMP"], f"rendezvous-{port}")
    for round_ in range(2):
        rpc.init_rpc(f"worker{rank}", rank=rank, world_size=world_size,
                     rpc_backend_options=_options(init_method=f"file://{path}"))
        assert rpc.rpc_sync(f"worker{(rank + 1) % world_size}", remote.add, args=(rank, round_)) == rank + round_
        rpc.shutdown()


def ddp_inside_a_distributed_context(rank: int, world_size: int, port: int) -> None:
    """DDP over two ranks inside dist_autograd.context: the context holds the DDP-averaged gradient,
    bit for bit what a plain DDP backward leaves in .grad; .grad is left alone by the context pass."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from distautograd import autograd as dist_autograd

    _master(port)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size)
    rpc.init_rpc(f"worker{rank}", rank=rank, world_size=world_size, rpc_backend_options=_options())
    torch.manual_seed(0)
    model = DDP(torch.nn.Linear(4, 1, bias=False))
    peer = f"worker{(rank + 1) % world_size}"

    def loss():
        x = rpc.rpc_sync(peer, torch.mul, args=(torch.ones(2, 4), float(rank + 1)))  # 1s on rank 0, 2s on rank 1
        return model(x).sum()

    loss().backward()
    local = model.module.weight.grad.clone()
    with dist_autograd.context() as context_id:
        dist_autograd.backward(context_id, [loss()])
        in_context = dist_autograd.get_gradients(context_id)[model.module.weight]
    assert torch.equal(in_context, torch.full((1, 4), 3.0)), in_context
    assert torch.equal(in_context, local), (in_context, local)
    assert torch.equal(model.module.weight.grad, local), "the context pass changed .grad"
    rpc.shutdown()
    dist.destroy_process_group()


def collectives_of_torchs_private_api(rank: int, world_size: int, port: int) -> None:
    """rpc.api._all_gather over the whole world and _wait_all_workers, as torch's tests use them."""
    _master(port)
    rpc.init_rpc(f"worker{rank}", rank=rank, world_size=world_size, rpc_backend_options=_options())
    gathered = rpc.api._all_gather(rank * 10)
    assert gathered == {f"worker{r}": r * 10 for r in range(world_size)}, gathered
    if rank == 0:
        time.sleep(1.0)  # the others wait here for rank 0
    started = time.monotonic()
    rpc.api._wait_all_workers(timeout=30)
    assert rank == 0 or time.monotonic() - started > 0.5, "_wait_all_workers returned before everyone came"
    rpc.shutdown()
