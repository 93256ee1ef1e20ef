"""torch.distributed.rpc's public surface, served over gRPC: change the import, keep the program."""

from distautograd.runtime.options import BackendOptions, TensorPipeRpcBackendOptions
from distautograd.rpc import functions
from distautograd.rpc.api import (
    BackendType,
    _set_rpc_timeout,
    get_rpc_timeout,
    get_worker_info,
    init_rpc,
    is_available,
    remote,
    rpc_async,
    rpc_sync,
    shutdown,
)
from distautograd.runtime.rrefs import RRef
from distautograd.runtime.world import WorkerInfo

RpcBackendOptions = BackendOptions

__all__ = [
    "_set_rpc_timeout",
    "BackendOptions",
    "BackendType",
    "RRef",
    "RpcBackendOptions",
    "TensorPipeRpcBackendOptions",
    "WorkerInfo",
    "functions",
    "get_rpc_timeout",
    "get_worker_info",
    "init_rpc",
    "is_available",
    "remote",
    "rpc_async",
    "rpc_sync",
    "shutdown",
]
