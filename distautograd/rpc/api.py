"""The rpc verbs with torch.distributed.rpc's names, arguments and semantics."""

from __future__ import annotations

import enum
import functools
import os
import threading
from typing import Any, Callable, Optional

import torch

from distautograd.runtime import collectives, current
from distautograd.runtime.agent import Agent, validate_name, validate_rank
from distautograd.runtime.options import UNSET_TIMEOUT, BackendOptions
from distautograd.runtime.rrefs import RRef
from distautograd.runtime.world import Destination, WorkerInfo


class BackendType(enum.Enum):
    """Accepted for torch compatibility: every backend name means this package's gRPC transport."""

    TENSORPIPE = "TENSORPIPE"
    GRPC = "GRPC"


def _require_initialized(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        current.get()  # raises "RPC has not been initialized. Call ... init_rpc first."
        return fn(*args, **kwargs)

    return guarded


def init_rpc(
    name: str,
    backend: Optional[BackendType] = None,
    rank: int = -1,
    world_size: Optional[int] = None,
    rpc_backend_options: Optional[BackendOptions] = None,
) -> None:
    """Joins this process to the world as ``name``; returns once ``world_size`` workers have joined.

    Args:
        name: a unique name for this worker (letters, digits, ``_ - . :``).
        backend: ignored apart from validation; kept for torch compatibility.
        rank: this worker's rank; -1 reads RANK from the environment, or lets the coordinator choose.
        world_size: how many workers to wait for; None reads WORLD_SIZE, or joins an open world.
        rpc_backend_options: a BackendOptions (alias TensorPipeRpcBackendOptions).

    Rank 0 hosts the coordinator at MASTER_ADDR:MASTER_PORT (or ``init_method``) unless an external
    one is named with ``BackendOptions(coordinator=...)`` or DISTAUTOGRAD_COORDINATOR.

    Example::

        On worker 0:
            >>> rpc.init_rpc("worker0", rank=0, world_size=2)
        On worker 1:
            >>> rpc.init_rpc("worker1", rank=1, world_size=2)
    """
    if backend is not None and not isinstance(backend, BackendType):
        raise TypeError(f"backend must be a BackendType, got {backend!r}")
    validate_name(name)
    if rank == -1 and os.environ.get("RANK"):
        rank = int(os.environ["RANK"])
    if world_size is None and os.environ.get("WORLD_SIZE"):
        world_size = int(os.environ["WORLD_SIZE"])
    if world_size is not None and world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    validate_rank(rank, world_size)
    options = rpc_backend_options if rpc_backend_options is not None else BackendOptions()
    if not isinstance(options, BackendOptions):
        raise TypeError(f"rpc_backend_options must be a BackendOptions, got {type(options).__name__}")
    if current.peek() is not None:
        raise RuntimeError("RPC is already initialized in this process; call shutdown() first")
    agent = Agent(name, options)
    current.install(agent)
    try:
        agent.start(rank, world_size)
    except BaseException:
        current.install(None)
        try:
            agent.stop(graceful=False)
        except Exception:
            pass
        raise


@_require_initialized
def shutdown(graceful: bool = True, timeout: float = 0) -> None:
    """Leaves the world. Graceful: waits until every non-daemon worker calls shutdown and all
    outstanding calls everywhere have finished (bounded by ``timeout`` or the rpc timeout)."""
    agent = current.get()
    try:
        agent.stop(graceful, timeout or None)
    finally:
        current.install(None)


def _shutdown_at_exit() -> None:
    agent = current.peek()
    if agent is not None:
        current.install(None)
        try:
            agent.stop(graceful=False)
        except Exception:
            pass


# threading's exit hooks run before atexit's, and concurrent.futures joins its worker threads in one:
# stop first, or a process that never called shutdown() would hang on exit.
threading._register_atexit(_shutdown_at_exit)


@_require_initialized
def get_worker_info(worker_name: Optional[str] = None) -> WorkerInfo:
    """The WorkerInfo of ``worker_name``, or of this worker."""
    agent = current.get()
    return agent.info() if worker_name is None else agent.world.resolve(worker_name)


@_require_initialized
def rpc_async(
    to: Destination, func: Callable, args: Optional[tuple] = None, kwargs: Optional[dict] = None, timeout: float = UNSET_TIMEOUT
) -> torch.futures.Future:
    """Runs ``func(*args, **kwargs)`` on worker ``to``; returns a torch Future of the result.

    ``to`` is a name, a rank or a WorkerInfo. ``timeout`` in seconds; 0 means none; unset uses the
    default from the backend options. Inside a distributed autograd context the call records the
    send and recv points of every tensor that requires grad.

    Example::

        On worker 0:
            >>> fut = rpc.rpc_async("worker1", torch.add, args=(torch.ones(2), 3))
            >>> fut.wait()
            tensor([4., 4.])
    """
    agent = current.get()
    return agent.calls.invoke(agent.world.resolve(to), func, args, kwargs, timeout)


@_require_initialized
def rpc_sync(
    to: Destination, func: Callable, args: Optional[tuple] = None, kwargs: Optional[dict] = None, timeout: float = UNSET_TIMEOUT
) -> Any:
    """``rpc_async(...).wait()``: runs ``func`` on ``to`` and returns its result (re-raising its error)."""
    return rpc_async(to, func, args, kwargs, timeout).wait()


@_require_initialized
def remote(
    to: Destination, func: Callable, args: Optional[tuple] = None, kwargs: Optional[dict] = None, timeout: float = UNSET_TIMEOUT
) -> RRef:
    """Runs ``func`` on ``to`` and keeps the result there; returns an RRef to it at once.

    Example::

        On worker 0:
            >>> rref = rpc.remote("worker1", torch.add, args=(torch.ones(2), 3))
            >>> rref.to_here()
            tensor([4., 4.])
    """
    agent = current.get()
    return agent.calls.remote(agent.world.resolve(to), func, args, kwargs, timeout)


def is_available() -> bool:
    return True


@_require_initialized
def get_rpc_timeout() -> float:
    """The default timeout of calls, in seconds (0: none), as torch's."""
    return float(current.get().options.rpc_timeout)


@_require_initialized
def _set_rpc_timeout(rpc_timeout: float) -> None:
    """Sets the default timeout of later calls, in seconds (0: none), as torch's private setter."""
    if rpc_timeout < 0:
        raise ValueError(f"rpc_timeout must be >= 0 seconds (0 = no limit), got {rpc_timeout}")
    current.get().options.rpc_timeout = float(rpc_timeout)


@_require_initialized
def _all_gather(obj: Any, worker_names: Optional[list] = None, timeout: float = UNSET_TIMEOUT) -> dict:
    """{worker name: its ``obj``} from every worker (or those named), each calling this in the same order."""
    agent = current.get()
    names = worker_names if worker_names is not None else [w.name for w in agent.world.members()]
    collector = collectives.leader(names)
    future = agent.calls.invoke(agent.world.resolve(collector), collectives.gather,
                                (collectives.next_round("all_gather", names), agent.name, obj, len(names)), {}, timeout)
    return future.wait()


@_require_initialized
def _wait_all_workers(timeout: float = 60.0) -> None:
    """Returns once every worker has called it (a barrier through the coordinator)."""
    agent = current.get()
    names = [w.name for w in agent.world.members()]
    agent.barrier(collectives.next_round("wait_all_workers", names), timeout, "_wait_all_workers")
