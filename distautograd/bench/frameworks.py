"""The two frameworks behind one interface: the same program runs on either, as the APIs are the same."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Framework:
    name: str
    rpc: Any
    autograd: Any
    DistributedOptimizer: Any

    def init(self, name: str, rank: int, world_size: int, port: int, transport: str = "auto", threads: int = 8) -> None:
        os.environ.update(MASTER_ADDR=os.environ.get("BENCH_MASTER_ADDR", "127.0.0.1"), MASTER_PORT=str(port))
        if self.name == "torch":
            transports = ["uv"] if transport == "tcp" else None
            options = self.rpc.TensorPipeRpcBackendOptions(
                num_worker_threads=threads, rpc_timeout=300, init_method=f"tcp://{os.environ['MASTER_ADDR']}:{port}",
                _transports=transports,
            )
        else:
            options = self.rpc.BackendOptions(
                num_worker_threads=threads, rpc_timeout=300, transport=transport,
                allowed_modules=["distautograd.bench"],
            )
        self.rpc.init_rpc(name, rank=rank, world_size=world_size, rpc_backend_options=options)


def load(name: str) -> Framework:
    if name == "torch":
        import torch.distributed.autograd as autograd
        import torch.distributed.rpc as rpc
        from torch.distributed.optim import DistributedOptimizer

        return Framework("torch", rpc, autograd, DistributedOptimizer)
    from distautograd import autograd, rpc
    from distautograd.optim import DistributedOptimizer

    return Framework("distautograd", rpc, autograd, DistributedOptimizer)
