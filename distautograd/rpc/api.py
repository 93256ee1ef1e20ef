"""The rpc verbs with torch.distributed.rpc's names, arguments and semantics, and the private helpers of
torch's ``rpc.api`` that programs and torch's own tests use (gathering, barriers, graceful shutdown).

The helpers keep torch's shape on purpose: ``_all_gather`` gathers at the leader and broadcasts
back with ``_broadcast_to_followers``, and ``shutdown`` calls ``_wait_all_workers`` and
``_delete_all_user_and_unforked_owner_rrefs`` through this module's namespace, so code that
patches them (as torch's tests do) sees the same behaviour it would see in torch.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import os
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import torch

from distautograd.encoding.allowlist import trusted_global
from distautograd.rpc import constants
from distautograd.runtime import current
from distautograd.runtime.agent import Agent, validate_name, validate_rank
from distautograd.runtime.options import UNSET_TIMEOUT, BackendOptions, RpcBackendOptions
from distautograd.runtime.rref import RRef
from distautograd.runtime.world import Destination, WorkerInfo

log = logging.getLogger("distautograd")

# As torch's: RRefs still alive at a graceful shutdown are released there. Set to False to make
# shutdown raise on them instead ("Leaking RRef ..."), to find references a program forgot.
_ignore_rref_leak = True


class BackendType(enum.Enum):
    """Accepted for torch compatibility: every backend name means this package's transport."""

    TENSORPIPE = "TENSORPIPE"
    GRPC = "GRPC"


def _require_initialized(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        current.get()  # raises "RPC has not been initialized. Call ... init_rpc first."
        return fn(*args, **kwargs)

    return guarded


def _check_backend(backend: Any, options: Any) -> BackendOptions:
    if backend is not None and not isinstance(backend, BackendType):
        raise TypeError(f"Argument backend must be a member of BackendType, got {backend!r}")
    if options is None:
        return BackendOptions()
    if not isinstance(options, RpcBackendOptions):
        raise TypeError(f"Argument rpc_backend_options must be an instance of RpcBackendOptions, "
                        f"got {type(options).__name__}")
    if not isinstance(options, BackendOptions):
        if backend is None:
            raise TypeError(f"Could not infer backend for options {options!r}: pass a "
                            "TensorPipeRpcBackendOptions (distautograd.rpc.BackendOptions)")
        raise TypeError(f"`rpc_backend_options` must be a `TensorPipeRpcBackendOptions`, got "
                        f"{type(options).__name__}")
    return options


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
    options = _check_backend(backend, rpc_backend_options)
    _init_rpc_backend(backend, None, name, rank, world_size, options)


def _init_rpc_backend(backend, store, name: str, rank: int = -1, world_size: Optional[int] = None,
                      rpc_backend_options: Optional[BackendOptions] = None) -> None:
    """init_rpc with the rendezvous ``store`` given (torch's private form; None: from the options)."""
    options = _check_backend(backend, rpc_backend_options)
    validate_name(name)
    if rank == -1 and os.environ.get("RANK"):
        rank = int(os.environ["RANK"])
    if world_size is None and os.environ.get("WORLD_SIZE"):
        world_size = int(os.environ["WORLD_SIZE"])
    if world_size is not None and world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    validate_rank(rank, world_size)
    if current.peek() is not None:
        raise RuntimeError("RPC is already initialized in this process; call shutdown() first")
    agent = Agent(name, options)
    current.install(agent)
    try:
        agent.start(rank, world_size, store)
    except BaseException:
        current.install(None)
        try:
            agent.stop(graceful=False)
        except Exception:
            pass
        raise


# ---------------------------------------------------------------------- gathering, as torch's

class _GatherState:
    def __init__(self) -> None:
        self.gathered: Dict[str, Any] = {}
        self.proceed = threading.Event()


_gather_lock = threading.RLock()
_gather_rounds: Dict[str, int] = {}  # group -> rounds this process began
_gather_states: Dict[str, _GatherState] = {}


def _gather_state(sequence_id: str) -> _GatherState:
    with _gather_lock:
        return _gather_states.setdefault(sequence_id, _GatherState())


@trusted_global
def _gather_to_leader(sequence_id: str, worker_name: str, obj: Any, worker_names: Iterable[str] = ()) -> None:
    """On the leader: ``worker_name``'s value for round ``sequence_id``."""
    state = _gather_state(sequence_id)
    with _gather_lock:
        if worker_name in state.gathered:
            raise RuntimeError(f"{worker_name} reported intent sequence id {sequence_id} twice")
        state.gathered[worker_name] = obj
        if set(worker_names) == set(state.gathered):
            state.proceed.set()


@trusted_global
def _broadcast_to_followers(sequence_id: str, objects_map: Dict[str, Any]) -> None:
    """On a follower: every worker's value for round ``sequence_id``, from the leader."""
    state = _gather_state(sequence_id)
    if state.proceed.is_set():
        raise RuntimeError(f"Termination signal sequence id {sequence_id} got set twice")
    state.gathered = objects_map
    state.proceed.set()


def _members(agent: Agent) -> List[str]:
    """The workers that take part in gathering and shutdown: the live ones that are not daemons."""
    return [w.name for w in agent.world.members() if not w.daemon]


@_require_initialized
def _all_gather(obj: Any, worker_names: Optional[Iterable[str]] = None, timeout: float = UNSET_TIMEOUT) -> dict:
    """{worker name: its ``obj``} from every worker (or those named), each calling this in the same
    order. The worker with the smallest name gathers and answers everyone. ``timeout``: as torch's
    (unset: the rpc timeout for the calls and no limit on the wait)."""
    agent = current.get()
    names = set(worker_names) if worker_names else set(_members(agent))
    leader = min(names)
    group = "".join(sorted(names))
    with _gather_lock:
        number = _gather_rounds.get(group, 0)
        _gather_rounds[group] = number + 1
    sequence_id = f"{group}{number}"
    if timeout == UNSET_TIMEOUT:
        rpc_timeout, wait = get_rpc_timeout(), None
    elif timeout == constants.DEFAULT_SHUTDOWN_TIMEOUT:
        rpc_timeout, wait = timeout, None
    else:
        rpc_timeout = wait = timeout
    if leader == agent.name:
        _gather_to_leader(sequence_id, agent.name, obj, names)
    else:
        rpc_sync(leader, _gather_to_leader, args=(sequence_id, agent.name, obj, names), timeout=rpc_timeout)
    state = _gather_state(sequence_id)
    state.proceed.wait(timeout=wait)
    if leader == agent.name:
        futures = {name: rpc_async(name, _broadcast_to_followers, args=(sequence_id, state.gathered),
                                   timeout=rpc_timeout) for name in sorted(names - {leader})}
        failed = []
        for name, future in futures.items():
            try:
                future.wait()
            except RuntimeError as exc:
                failed.append((name, exc))
        if failed:
            raise RuntimeError(f"Followers {[name for name, _ in failed]} timed out in _all_gather after "
                               f"{rpc_timeout:.2f} seconds. The first exception is {failed[0][1]}")
    with _gather_lock:
        return _gather_states.pop(sequence_id).gathered


@_require_initialized
def _barrier(worker_names: Iterable[str]) -> None:
    """Returns once every worker named has called it (torch's: failures are logged, not raised)."""
    try:
        _all_gather(None, set(worker_names))
    except RuntimeError:
        log.exception("Failed to complete barrier")


@_require_initialized
def _wait_all_workers(timeout: float = constants.DEFAULT_SHUTDOWN_TIMEOUT) -> None:
    """Returns once every worker has called it: the first step of a graceful shutdown."""
    try:
        _all_gather(None, timeout=timeout)
    except RuntimeError:
        log.exception("Failed to respond to 'Shutdown Proceed' in time")
        raise


_thread_local_var = threading.local()


@contextlib.contextmanager
def _use_rpc_pickler(rpc_pickler) -> Iterator[None]:
    """Refused: torch lets a program swap the pickler its calls go through; here every call goes
    through the restricted unpickler and its allowlist (the security model), which nothing replaces."""
    raise RuntimeError(
        "distautograd does not let a program replace the pickler of its calls: values travel through its "
        "restricted unpickler, which loads only what the allowlist admits (see the README's security model)")
    yield  # pragma: no cover


@contextlib.contextmanager
def _wait_all() -> Iterator[None]:
    """Every ``rpc_async`` future made inside the block is waited for when it ends, as torch's."""
    _thread_local_var.future_list = []
    try:
        yield
    finally:
        try:
            torch.futures.wait_all(_thread_local_var.future_list)
        finally:
            del _thread_local_var.future_list


# ---------------------------------------------------------------------- shutdown

@_require_initialized
def _delete_all_user_and_unforked_owner_rrefs(timeout: float = 0) -> None:
    """Releases every RRef this worker holds (they fail if used after) and waits for the releases
    to be sent."""
    current.get().rrefs.delete_all()


@_require_initialized
def shutdown(graceful: bool = True, timeout: float = constants.DEFAULT_SHUTDOWN_TIMEOUT) -> None:
    """Leaves the world. Graceful: waits until every non-daemon worker calls shutdown and all
    outstanding work everywhere is done, releasing this worker's RRefs on the way (bounded by
    ``timeout`` seconds); in a world joined without a world_size (members come and go, as torch's
    dynamic groups) it waits for this worker's own work only. Not graceful: leaves at once,
    failing what is in flight."""
    if graceful:
        try:
            agent = current.get()
            if agent.is_static_group:
                _wait_all_workers(timeout)
                _delete_all_user_and_unforked_owner_rrefs()
                agent.join(shutdown=True, timeout=timeout)
            else:
                _delete_all_user_and_unforked_owner_rrefs()
                agent.drain(timeout)
        finally:
            _finalize_shutdown(graceful=True)
    else:
        _finalize_shutdown(graceful=False)


def _finalize_shutdown(graceful: bool = False) -> None:
    agent = current.get()
    try:
        if not _ignore_rref_leak:
            agent.rrefs.check_no_leaks()
    finally:
        current.install(None)
        agent.stop(graceful=graceful)


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


# ---------------------------------------------------------------------- the verbs

@_require_initialized
def get_worker_info(worker_name: Optional[str] = None) -> WorkerInfo:
    """The WorkerInfo of ``worker_name``, or of this worker."""
    return current.get().get_worker_info(worker_name)


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
    future = _invoke(to, func, args, kwargs, timeout, "async")
    pending = getattr(_thread_local_var, "future_list", None)
    if pending is not None:
        pending.append(future)
    return future


@_require_initialized
def rpc_sync(
    to: Destination, func: Callable, args: Optional[tuple] = None, kwargs: Optional[dict] = None, timeout: float = UNSET_TIMEOUT
) -> Any:
    """``rpc_async(...).wait()``: runs ``func`` on ``to`` and returns its result (re-raising its error)."""
    return _invoke(to, func, args, kwargs, timeout, "sync").wait()


def _invoke(to: Destination, func: Callable, args, kwargs, timeout: float, mode: str) -> torch.futures.Future:
    """The one path of rpc_sync and rpc_async (only rpc_async's futures join a ``_wait_all`` block;
    ``mode`` names the call in torch's profiler)."""
    agent = current.get()
    return agent.calls.invoke(agent.world.resolve(to), func, args, kwargs, timeout, mode=mode)


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


def _get_current_rpc_agent() -> Agent:
    """This process's agent (``get_worker_infos()``, ``get_debug_info()``, ...), as torch's."""
    agent = current.peek()
    if agent is None:
        raise RuntimeError(current.NOT_SET)
    return agent


def _is_current_rpc_agent_set() -> bool:
    return current.peek() is not None
