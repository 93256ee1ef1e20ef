"""torch.distributed.rpc.backend_registry's names: one backend here, whatever a program asks for."""

from distautograd.rpc.api import BackendType
from distautograd.runtime.options import BackendOptions


def backend_registered(backend_name: str) -> bool:
    return backend_name in BackendType.__members__


def construct_rpc_backend_options(backend, rpc_timeout: float = 60.0, init_method: str = "env://",
                                  **kwargs) -> BackendOptions:
    """The options of ``backend`` (any of BackendType: they all mean this package's transport)."""
    if not isinstance(backend, BackendType):
        raise TypeError(f"backend must be a member of BackendType, got {backend!r}")
    return BackendOptions(rpc_timeout=rpc_timeout, init_method=init_method, **kwargs)


def register_backend(backend_name: str, construct_rpc_backend_options_handler, init_backend_handler):
    raise RuntimeError(
        f"cannot register RPC backend {backend_name!r}: distautograd has one transport (Unix socket, TCP, gRPC), "
        "and every BackendType names it; choose among its paths with BackendOptions(transport=...)")
