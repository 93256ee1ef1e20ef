"""The RRef handle a program holds: its value fetched, its methods called on the owner, its fork released when it goes.

An RRef is one fork of a value its owner keeps (runtime.rrefs, the store): made by ``RRef(value)``
(this worker owns it), by ``rpc.remote`` (another does), or arriving in a call (a fork of its own).
What it does remotely goes through the store's ``RRefRuntime`` port.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Optional

import torch

from distautograd import errors
from distautograd.ids import LOCAL_MASK, rank_of
from distautograd.runtime import current
from distautograd.runtime.options import UNSET_TIMEOUT
from distautograd.runtime.world import WorkerInfo
from distautograd.transport import reading


class RRef:
    """A reference to a value that lives on one worker, its owner; as torch.distributed.rpc.RRef.

    ``RRef(value)`` makes this worker the owner of ``value``; ``rpc.remote`` makes one owned by
    another worker. Pass RRefs freely as arguments and results of calls: the owner frees the value
    once no RRef to it is left anywhere.
    """

    def __init__(self, value: Any, type_hint: Any = None):
        agent = current.peek()
        if agent is None:
            raise RuntimeError(current.NOT_SET)
        store = agent.rrefs
        rref_id, fork_id = store.own(value)
        self._init(store, rref_id, store.mint.rank, fork_id, None)

    @classmethod
    def _make(cls, store: Any, rref_id: int, owner: int, fork_id: int, created: Optional[Future]) -> "RRef":
        """``store``: the runtime.rrefs.RRefStore of this process, which counts the fork."""
        self = cls.__new__(cls)
        self._init(store, rref_id, owner, fork_id, created)
        return self

    def _init(self, store, rref_id, owner, fork_id, created) -> None:
        self._store = store
        self._id = rref_id
        self._owner = owner
        self._fork = fork_id
        self._created = created
        self._deleted = False
        self._owner_name = store.world.name_of(owner)
        store._held.add(self)

    def __class_getitem__(cls, item):
        # In annotations: ``RRef[T]`` is TorchScript's RRef type, so a scripted function that takes one
        # compiles (torch checks for its own class); called with an RRef of ours, it runs its Python source.
        return torch._jit_internal.RRef[item]

    def __del__(self) -> None:
        self._delete()

    def _delete(self) -> None:
        """Lets go of this reference's fork: the owner frees the value once no fork is left."""
        fork = getattr(self, "_fork", 0)
        if fork and not self._deleted:
            self._deleted = True
            try:
                self._store.release(self._id, self._owner, fork)
            except Exception:
                pass

    def _check_alive(self, action: str) -> None:
        if self._deleted:
            raise RuntimeError(f"User RRef with RRefId={guid_text(self._id)} and ForkId={guid_text(self._fork)} has been "
                               f"deleted. Cannot call {action} on it after deletion.")

    def __reduce__(self):
        if self._deleted:
            raise RuntimeError("Cannot call fork an UserRRef after deletion.")
        raise RuntimeError("Can not pickle rref in python pickler: an RRef travels only as an argument or result "
                           "of an rpc call (torch.save and pickle cannot take it)")

    def __str__(self) -> str:
        if self.is_owner():
            return f"OwnerRRef({guid_text(self._id)})"
        return f"UserRRef(RRefId = {guid_text(self._id)}, ForkId = {guid_text(self._fork)})"

    def __repr__(self) -> str:
        return f"{self} on {self._owner_name}"

    def is_owner(self) -> bool:
        return self._owner == self._store.mint.rank

    def owner(self) -> WorkerInfo:
        return WorkerInfo._make((self._owner_name, self._owner))

    def owner_name(self) -> str:
        return self._owner_name

    def confirmed_by_owner(self) -> bool:
        """True once the owner knows this reference (at once for the owner and for forks)."""
        created = self._created
        return created is None or (created.done() and errors.failure(created) is None)

    def local_value(self) -> Any:
        """The value itself; only on the owner."""
        if not self.is_owner():
            here = WorkerInfo._make((self._store.world.name_of(self._store.mint.rank), self._store.mint.rank))
            raise RuntimeError(
                f"For UserRRef(rref_id={guid_text(self._id)}, fork_id={guid_text(self._fork)}), can't call localValue() on "
                f"user {here}. Call it on owner {self.owner()} (or call to_here() for a copy)")
        return self._store.value(self._id).result()

    def to_here(self, timeout: float = UNSET_TIMEOUT) -> Any:
        """The value, copied here from the owner (blocking)."""
        self._check_alive("to_here()")
        if self.is_owner():
            return self.local_value()
        failed = self.creation_failure()
        if failed is not None:
            raise failed
        return self._store.runtime.fetch(self, timeout).wait()

    def creation_failure(self) -> Optional[BaseException]:
        """Why remote() could not make this RRef's value, once that is known (None otherwise): as in
        torch, an RRef whose creation failed or timed out fails from then on."""
        created = self._created
        error = errors.failure(created) if created is not None and created.done() else None
        if isinstance(error, errors.DeadlineExceeded):
            return errors.DeadlineExceeded(
                f"RRef creation via rpc.remote() timed out, and it is possible that the RRef on the owner "
                f"{self._owner_name} does not exist: {error}", worker=error.worker)
        return error

    def _serialize(self):
        """torch's PyRRef hook for its own pickler: an RRef travels only inside an rpc call."""
        return self.__reduce__()

    def _get_profiling_future(self) -> torch.futures.Future:
        """The future torch's profiler waits for: the creation, whose range ends with it (also when
        this worker owns the value)."""
        return getattr(self, "_profiled", None) or self._get_future()

    def _get_future(self) -> torch.futures.Future:
        """The future of this RRef's creation on its owner (done at once for RRefs not made by remote())."""
        if self._created is not None:
            return self._created
        done = torch.futures.Future()
        done.set_result(None)
        return done

    def rpc_sync(self, timeout: float = UNSET_TIMEOUT) -> "_Proxy":
        """``rref.rpc_sync().method(*args)`` runs ``method`` on the owner's value and returns its result."""
        return _Proxy(self, "rpc_sync", timeout)

    def rpc_async(self, timeout: float = UNSET_TIMEOUT) -> "_Proxy":
        """``rref.rpc_async().method(*args)`` returns a torch Future of the result."""
        return _Proxy(self, "rpc_async", timeout)

    def remote(self, timeout: float = UNSET_TIMEOUT) -> "_Proxy":
        """``rref.remote().method(*args)`` returns an RRef to the result, kept on the owner."""
        return _Proxy(self, "remote", timeout)

    def backward(self, dist_autograd_ctx_id: int = -1, retain_graph: bool = False) -> None:
        """Runs backward from this RRef's value on its owner, as torch's RRef.backward.

        With a context id it is a distributed backward in that context (read the results with
        get_gradients); with -1 it is a local ``value.backward()`` on the owner (only the owner
        may, as in torch).
        """
        if dist_autograd_ctx_id == -1 and not self.is_owner():
            raise RuntimeError("User RRefs require 'dist_autograd_ctx_id' to be specified")
        self._store.runtime.backward_on_owner(self, dist_autograd_ctx_id, retain_graph)

    def _get_type(self, timeout: float = UNSET_TIMEOUT, blocking: bool = True):
        """The type of the value, or (``blocking=False``) a Future of it: asked of the owner once,
        the same future answers every later ask (a failed ask is asked again next time)."""
        future = getattr(self, "_type", None)
        if future is None:
            future = self._type = torch.futures.Future()
            if self.is_owner():
                asked = torch.futures.Future()
                try:
                    asked.set_result(type(self.local_value()))
                except Exception as exc:
                    asked.set_exception(exc)
            else:
                asked = self._store.runtime.type_on_owner(self, timeout)
            asked.add_done_callback(lambda done: self._take_type(future, done))
        if not blocking:
            return future
        reading.before_blocking()
        return future.wait()

    def _take_type(self, future: torch.futures.Future, asked: torch.futures.Future) -> None:
        error = errors.failure(asked)
        if error is None:
            future.set_result(asked.value())
            return
        self._type = None
        future.set_exception(error)


def guid_text(id_: int) -> str:
    """An id as torch prints RRef ids: the worker that minted it and its number there."""
    return f"GloballyUniqueId(created_on={rank_of(id_)}, local_id={id_ & LOCAL_MASK})"


class _Proxy:
    def __init__(self, rref: RRef, mode: str, timeout: float):
        self._rref = rref
        self._mode = mode
        self._timeout = timeout

    def __getattr__(self, name: str):
        rref, mode, timeout = self._rref, self._mode, self._timeout

        def call(*args, **kwargs):
            if mode == "remote":  # as torch: a name the value's type lacks fails here, not at to_here()
                getattr(rref._get_type(timeout), name)
            return rref._store.runtime.call_method(rref, name, args, kwargs, mode, timeout)

        return call
