"""The values this worker owns and the fork counting that frees them (the RRef handle: runtime.rref).

The owner keeps a set of live forks per value; every RRef object anywhere holds one fork. A fork
is registered with the owner before (or, through tombstones, no matter in which order) its
holder can drop it, so the owner frees a value exactly when the last holder lets go. Holders that
die lose their forks when the coordinator announces the departure: the owner knows each fork's
holder (a fork is minted by the worker that sends the RRef, for the worker it sends it to).

Messages about one RRef travel on different streams, so the owner may hear of it (a fetch, a
fork) before the call that creates it: the first mention makes the entry, whose value the
creating call fills in later. Ids of freed values are remembered, so a late mention fails cleanly.

What an RRef does remotely (fetch its value, call a method of it on the owner) goes through the
``RRefRuntime`` port the runtime binds to the store.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional, Protocol, Set

import torch

from distautograd import errors
from distautograd.ids import IdMint, rank_of
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.rref import RRef, guid_text
from distautograd.runtime.world import WorldView
from distautograd.transport.shares import Shares, rank_key

log = logging.getLogger("distautograd")
_FREED_MEMORY = 100_000


class RRefRuntime(Protocol):
    """What an RRef needs from the runtime to act on its owner's value."""

    def fetch(self, rref: "RRef", timeout: float) -> torch.futures.Future: ...

    def call_method(self, rref: "RRef", name: str, args: tuple, kwargs: dict, mode: str, timeout: float) -> Any: ...

    def backward_on_owner(self, rref: "RRef", context_id: int, retain_graph: bool) -> None: ...

    def type_on_owner(self, rref: "RRef", timeout: float) -> torch.futures.Future: ...


class _Owned:
    __slots__ = ("value", "forks", "tombstones")

    def __init__(self) -> None:
        self.value: Future = Future()
        self.forks: Dict[int, int] = {}  # fork id -> the rank that holds it
        self.tombstones: Set[int] = set()


class RRefStore:
    """The values this worker owns and the forks that keep them alive."""

    def __init__(self, name: str, mint: IdMint, notify: Callable[[int, pb.Request], None], world: WorldView,
                 per_peer: int = 65536):
        """``per_peer``: RRefs another worker may hold to values here (the peer_rrefs option)."""
        self.name = name
        self.held_by_peers = Shares("RRefs", per_peer)
        self.mint = mint
        self.world = world
        self._notify = notify
        self.runtime: Optional[RRefRuntime] = None  # bound by the composition root
        self._owned: Dict[int, _Owned] = {}
        self._freed: "collections.OrderedDict[int, None]" = collections.OrderedDict()
        self._refused: "collections.OrderedDict[int, str]" = collections.OrderedDict()  # remote()s over a share
        self._lock = threading.Lock()
        self._held: "weakref.WeakSet[RRef]" = weakref.WeakSet()  # every RRef object alive here
        self._releases: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain_releases, name="distautograd-rref-release", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ owner side

    def create_owned(self, rref_id: int, fork_id: int, for_peer: bool = False) -> _Owned:
        """The entry of a value made here, with its creator's fork. ``for_peer``: a peer's remote()
        asked for it, and is refused RESOURCE_EXHAUSTED when it holds its share of RRefs here."""
        with self._lock:
            holder = rank_of(fork_id)
            if for_peer and holder != self.mint.rank:
                refused = self.held_by_peers.take(rank_key(holder))
                if refused is not None:
                    # a fetch of it may be on its way already: it gets this answer, not a wait for a value
                    self._refused[rref_id] = refused = f"{self.name}: {refused}"
                    while len(self._refused) > _FREED_MEMORY:
                        self._refused.popitem(last=False)
                    raise errors.ResourceExhausted(refused)
            owned = self._entry_locked(rref_id)
            self._add_fork_locked(rref_id, owned, fork_id, counted=for_peer)
            return owned

    def _entry_locked(self, rref_id: int) -> _Owned:
        """The entry for ``rref_id``, made on its first mention; NotFound once it has been freed."""
        owned = self._owned.get(rref_id)
        if owned is None:
            if rref_id in self._freed:
                raise errors.NotFound(f"RRef {rref_id} owned by {self.name} was already deleted")
            if rref_id in self._refused:
                raise errors.ResourceExhausted(self._refused[rref_id])
            owned = self._owned[rref_id] = _Owned()
        return owned

    def own(self, value: Any) -> tuple:
        """Keeps ``value`` here under a new rref id; returns (rref id, the caller's fork id)."""
        rref_id, fork_id = self.mint(), self.mint()
        self.create_owned(rref_id, fork_id).value.set_result(value)
        return rref_id, fork_id

    def value(self, rref_id: int) -> Future:
        with self._lock:
            return self._entry_locked(rref_id).value

    def _add_fork_locked(self, rref_id: int, owned: _Owned, fork_id: int, holder: Optional[int] = None,
                         counted: bool = False) -> None:
        """``holder``: the rank that holds the fork; by default the one that minted it (a creator's own).
        A fork another worker holds counts in its share (``counted``: taken already)."""
        holder = rank_of(fork_id) if holder is None else holder
        mine = holder == self.mint.rank
        if fork_id in owned.tombstones:
            owned.tombstones.discard(fork_id)  # its holder let go before we heard it existed
            self._collect_locked(rref_id, owned)
            if counted and not mine:
                self.held_by_peers.give_back(rank_key(holder))
        elif fork_id in owned.forks:
            if counted and not mine:
                self.held_by_peers.give_back(rank_key(holder))  # heard twice: counted once
        else:
            owned.forks[fork_id] = holder
            if not counted and not mine:
                self.held_by_peers.count(rank_key(holder))

    def _drop_fork_locked(self, owned: _Owned, fork_id: int) -> None:
        holder = owned.forks.pop(fork_id)
        if holder != self.mint.rank:
            self.held_by_peers.give_back(rank_key(holder))

    def _remove_fork_locked(self, rref_id: int, fork_id: int) -> None:
        if rref_id in self._freed:
            return
        owned = self._entry_locked(rref_id)
        if fork_id in owned.forks:
            self._drop_fork_locked(owned, fork_id)
            self._collect_locked(rref_id, owned)
        else:
            owned.tombstones.add(fork_id)

    def _collect_locked(self, rref_id: int, owned: _Owned) -> None:
        if not owned.forks and not owned.tombstones:
            del self._owned[rref_id]
            self._freed[rref_id] = None
            while len(self._freed) > _FREED_MEMORY:
                self._freed.popitem(last=False)

    def add_fork(self, rref_id: int, fork_id: int, holder: int) -> None:
        with self._lock:
            if rref_id not in self._freed and rref_id not in self._refused:
                self._add_fork_locked(rref_id, self._entry_locked(rref_id), fork_id, holder)

    def on_departed(self, rank: int) -> None:
        """Drops the forks a departed worker held, and the releases waiting for an add it was to send."""
        with self._lock:
            for rref_id, owned in list(self._owned.items()):
                for fork_id in [f for f, holder in owned.forks.items() if holder == rank]:
                    self._drop_fork_locked(owned, fork_id)
                owned.tombstones = {f for f in owned.tombstones if rank_of(f) != rank}
                self._collect_locked(rref_id, owned)

    def forget_unborn(self, rref_id: int) -> bool:
        """Drops the entry a mention made for a value whose creating call never came; True if it did."""
        with self._lock:
            owned = self._owned.get(rref_id)
            if owned is None or owned.value.done() or owned.forks or owned.tombstones:
                return False
            del self._owned[rref_id]
            return True

    def owns(self, rref_id: int) -> bool:
        with self._lock:
            return rref_id in self._owned

    # ------------------------------------------------------------------ crossing the wire

    def handle_for(self, rref: "RRef", dest: int) -> pb.RRefHandle:
        """What travels in place of ``rref`` to worker ``dest``, registering the fork it will hold."""
        if rref._deleted:
            raise RuntimeError("Cannot call fork an UserRRef after deletion.")
        handle = pb.RRefHandle(rref_id=rref._id, owner=rref._owner)
        if dest == rref._owner != self.mint.rank:
            # To its owner from a user: our own fork keeps the value alive, and our release of it
            # travels behind this message on the same stream, after the owner has decoded it.
            return handle
        handle.fork_id = self.mint()  # minted here, held by dest
        if rref._owner == self.mint.rank:
            self.add_fork(rref._id, handle.fork_id, dest)
        else:
            change = pb.ForkChange(rref_id=rref._id, fork_id=handle.fork_id, add=True, holder=dest)
            self._notify(rref._owner, pb.Request(rref_forks=pb.RRefForks(changes=[change])))
        return handle

    def from_handle(self, handle: pb.RRefHandle) -> "RRef":
        if handle.owner == self.mint.rank:
            with self._lock:
                owned = self._entry_locked(handle.rref_id)
                fork_id = handle.fork_id
                if not fork_id:  # from a user: make the fork this new reference holds
                    fork_id = self.mint()
                    self._add_fork_locked(handle.rref_id, owned, fork_id)
            return RRef._make(self, handle.rref_id, handle.owner, fork_id, None)
        if not handle.fork_id:
            raise errors.InvalidArgument("an RRef arrived without a fork id")
        return RRef._make(self, handle.rref_id, handle.owner, handle.fork_id, None)

    # ------------------------------------------------------------------ requests from peers

    def handle_forks(self, link, body: pb.RRefForks, attachments) -> None:
        with self._lock:
            for change in body.changes:
                if change.rref_id in self._freed or change.rref_id in self._refused:
                    continue  # gone, or never made (a remote() over its share)
                if change.add:
                    self._add_fork_locked(change.rref_id, self._entry_locked(change.rref_id), change.fork_id,
                                          change.holder)
                else:
                    self._remove_fork_locked(change.rref_id, change.fork_id)

    # ------------------------------------------------------------------ release

    def delete_all(self) -> None:
        """Releases every RRef held here (a graceful shutdown's step, as torch's): using one after
        raises; waits until the releases are on their way."""
        for rref in list(self._held):
            rref._delete()
        self.flush()

    def check_no_leaks(self) -> None:
        """Raises if an RRef held here was never released (torch's leak check at shutdown)."""
        for rref in list(self._held):
            if rref._fork and not rref._deleted:
                raise RuntimeError(f"Leaking RRef {guid_text(rref._id)} with fork Id {guid_text(rref._fork)}: it was still "
                                   "held at shutdown (set rpc.api._ignore_rref_leak = True to release it silently)")

    def owned_count(self) -> int:
        """RRef values owned here (metrics)."""
        with self._lock:
            return len(self._owned)

    def debug_info(self) -> Dict[str, str]:
        """torch's RRef counters: values owned here that others know of, forks of them held
        elsewhere, values announced but not made yet, and RRefs made here by remote() whose owner
        has not answered yet."""
        held = list(self._held)
        here = {rref._fork for rref in held if rref.is_owner() and not rref._deleted}  # this worker's own RRefs
        with self._lock:
            elsewhere = [len(o.forks.keys() - here) for o in self._owned.values()]
            unborn = sum(1 for o in self._owned.values() if not o.value.done())
        shared, forks = sum(1 for n in elsewhere if n), sum(elsewhere)
        unconfirmed = sum(1 for rref in held
                          if not rref._deleted and rref._created is not None and not rref._created.done())
        return {"num_owner_rrefs": str(shared), "num_forks": str(forks),
                "num_pending_futures": str(unborn), "num_pending_users": str(unconfirmed)}

    def release(self, rref_id: int, owner: int, fork_id: int) -> None:
        """Called from RRef.__del__: any thread, maybe inside the garbage collector, so only enqueue."""
        self._releases.put((rref_id, owner, fork_id))

    def flush(self, timeout: float = 5.0) -> None:
        done = threading.Event()
        self._releases.put(done)
        done.wait(timeout)

    def stop(self) -> None:
        self._releases.put(None)
        self._thread.join(timeout=5)

    def _drain_releases(self) -> None:
        while True:
            item = self._releases.get()
            batch: List = [item]
            while True:
                try:
                    batch.append(self._releases.get_nowait())
                except queue.Empty:
                    break
            remote: Dict[int, List[pb.ForkChange]] = {}
            stop = False
            for entry in batch:
                if entry is None:
                    stop = True
                elif isinstance(entry, threading.Event):
                    entry.set()
                else:
                    rref_id, owner, fork_id = entry
                    if owner == self.mint.rank:
                        with self._lock:
                            self._remove_fork_locked(rref_id, fork_id)
                    else:
                        remote.setdefault(owner, []).append(pb.ForkChange(rref_id=rref_id, fork_id=fork_id))
            for owner, changes in remote.items():
                try:
                    self._notify(owner, pb.Request(rref_forks=pb.RRefForks(changes=changes)))
                except Exception as exc:  # the owner is gone, and with it the value
                    log.debug("could not release RRefs on rank %d: %s", owner, exc)
            if stop:
                return
