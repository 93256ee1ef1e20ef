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
