"""torch.distributed.rpc's public surface, served over gRPC: change the import, keep the program."""

from distautograd.runtime.agent import Agent as TensorPipeAgent
from distautograd.runtime.options import BackendOptions, RpcBackendOptions, TensorPipeRpcBackendOptions
from distautograd.rpc import api, backend_registry, constants, functions
from distautograd.rpc.api import (
    BackendType,
    _delete_all_user_and_unforked_owner_rrefs,
    _get_current_rpc_agent,
    _init_rpc_backend,
    _is_current_rpc_agent_set,
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
from distautograd.rpc.debug import _get_debug_info, _rref_context_get_debug_info, enable_gil_profiling
from distautograd.rpc.server_process_global_profiler import _server_process_global_profile
from distautograd.runtime.rref import RRef
from distautograd.runtime.world import WorkerInfo

RpcAgent = TensorPipeAgent
PyRRef = RRef  # torch's name for the class behind RRef

__all__ = [
    # torch's private names its own tests and user code reach for, as torch.distributed.rpc has them
    "_delete_all_user_and_unforked_owner_rrefs",
    "_get_current_rpc_agent",
    "_get_debug_info",
    "_init_rpc_backend",
    "_is_current_rpc_agent_set",
    "_rref_context_get_debug_info",
    "_server_process_global_profile",
    "_set_rpc_timeout",
    "api",
    "backend_registry",
    "constants",
    "BackendOptions",
    "BackendType",
    "RRef",
    "RpcAgent",
    "RpcBackendOptions",
    "TensorPipeAgent",
    "TensorPipeRpcBackendOptions",
    "WorkerInfo",
    "enable_gil_profiling",
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
