"""The members of the world: joining, heartbeats, leaving and dying, barriers, and the snapshot every worker gets."""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Deque, Dict, List, Optional, Set

from distautograd import __version__, errors, metrics
from distautograd.ids import MAX_RANK
from distautograd.protocol.v1 import messages_pb2 as pb

log = logging.getLogger("distautograd")
_DEPARTED_MEMORY = 1000
_EVENT_MEMORY = 100  # what the status page shows of the world's recent history


NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")
MAX_NAME = 128
MAX_ADDRESS = 512


def validate_join(join: pb.Join) -> None:
    """What a member may claim about itself: names printable and short, ranks that fit in an id, the
    package version of the world."""
    if not join.name or len(join.name) > MAX_NAME or not set(join.name) <= NAME_CHARACTERS:
        raise errors.InvalidArgument(
            f"a worker name must be 1 to {MAX_NAME} letters, digits or _ - . : characters; got {join.name[:MAX_NAME]!r}")
    if not -1 <= join.rank <= MAX_RANK:
        raise errors.InvalidArgument(f"rank {join.rank} is out of range: ranks go from 0 to {MAX_RANK} (-1: any)")
    if join.world_size > MAX_RANK + 1:
        raise errors.InvalidArgument(f"world_size {join.world_size} is over the largest world, {MAX_RANK + 1}")
    for field in ("address", "socket_address", "unix_path", "host_id", "host", "version", "message_path"):
        value = getattr(join, field)
        if len(value) > MAX_ADDRESS or not value.isprintable():
            raise errors.InvalidArgument(f"the {field} a worker joins with must be printable and at most "
                                         f"{MAX_ADDRESS} characters")
    if join.version and join.version != __version__:  # the wire changes between versions (conj bits in 0.2)
        raise errors.FailedPrecondition(
            f"worker '{join.name}' runs distautograd {join.version}, this world {__version__}: every process of a "
            "world must run the same version")


class Member:
    def __init__(self, entry: pb.WorkerEntry, link, world_size: int):
        self.entry = entry
        self.link = link
        self.world_size = world_size
        self.last_seen = time.monotonic()
        self.load = pb.Heartbeat()  # what it last reported holding
        self.unreachable_since: Optional[float] = None  # suspected, not dead: nothing of it is released

    @property
    def label(self) -> str:
        return f"'{self.entry.name}' (rank {self.entry.rank})"


class Membership:
    def __init__(self, on_departed: Callable[[pb.Departure], None]):
        self._on_departed = on_departed
        self._lock = threading.Lock()
        self._members: Dict[int, Member] = {}
        self._departed: List[pb.Departure] = []
        self._cannot_form = ""  # why a world of a fixed size will never be complete
        self._asked: Set[int] = set()  # ranks that asked to join, refused or not (for a world that cannot form)
        # Whether the first worker joined with a world_size: every later one must join as it did, even once
        # the first ones left (as torch's store remembers a static group after its members are gone).
        self._static: Optional[bool] = None
        # Held while a snapshot goes out: the host's own copy may arrive first, and the coordinator
        # must not stop (its host saw the world complete and shut down) before the others have theirs.
        self.sending = threading.Lock()
        self._version = 0
        self._barriers: Dict[str, Set[int]] = {}
        self._barrier_waiters: Dict[str, List[Future]] = {}
        self._changed = threading.Condition(self._lock)
        self._used: Set[int] = set()  # every rank a member has held: ids minted under it may still be about
        self.events: Deque[dict] = collections.deque(maxlen=_EVENT_MEMORY)  # joins, rejoins, deaths (wall time)

    # ------------------------------------------------------------------ queries

    def count(self, state: str) -> int:
        """Members that are ``reachable`` or ``unreachable`` now (metrics)."""
        with self._lock:
            return sum((m.unreachable_since is None) == (state == "reachable") for m in self._members.values())

    def _event(self, what: str, entry: pb.WorkerEntry, reason: str = "") -> None:
        self.events.append({"time": time.time(), "what": what, "name": entry.name, "rank": entry.rank,
                            "reason": reason})

    def member(self, rank: int) -> Optional[Member]:
        with self._lock:
            return self._members.get(rank)

    def members(self) -> List[Member]:
        with self._lock:
            return sorted(self._members.values(), key=lambda m: m.entry.rank)

    def departed(self) -> List[pb.Departure]:
        with self._lock:
            return list(self._departed)

    def wait_until_asked(self, world_size: int, timeout: float) -> bool:
        """Waits (bounded) until ``world_size`` ranks have asked to join, refused or not."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._asked) >= world_size, timeout)

    def wait_until(self, predicate, timeout: float) -> bool:
        """Waits (bounded) until ``predicate(set of member ranks)`` holds."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(set(self._members)), timeout)

    def label(self, rank: int) -> str:
        with self._lock:
            member = self._members.get(rank)
            if member is not None:
                return member.label
            gone = next((d for d in reversed(self._departed) if d.rank == rank), None)
        return f"'{gone.name}' (rank {rank})" if gone else f"rank {rank}"

    def _snapshot_locked(self) -> pb.WorldUpdate:
        now = time.monotonic()
        for member in self._members.values():  # how long each unreachable one has been silent, as of now
            member.entry.silent_ms = int((now - member.last_seen) * 1000) if member.unreachable_since is not None else 0
        return pb.WorldUpdate(
            version=self._version,
            workers=[m.entry for m in sorted(self._members.values(), key=lambda m: m.entry.rank)],
            departed=self._departed,
            cannot_form=self._cannot_form,
        )

    # ------------------------------------------------------------------ changes

    def join(self, link, join: pb.Join) -> pb.WorldUpdate:
        """Admits a process; the same process (same incarnation) joining again after its connection
        broke gets its membership back; a new process under the name of one that is unreachable
        replaces it (the old one is dead); any other name taken is refused."""
        validate_join(join)
        with self._lock:
            self._asked.add(join.rank)
            self._changed.notify_all()
            if self._cannot_form and join.world_size:  # latecomers to a world that cannot form learn why too
                raise errors.FailedPrecondition(self._cannot_form)
            holder = next((m for m in self._members.values() if m.entry.name == join.name), None)
            if holder is None:
                outcome = "joined"
                rank, snapshot = self._admit_locked(link, join)
            elif join.incarnation and holder.entry.incarnation == join.incarnation:
                outcome, rank = "joined again", holder.entry.rank
                snapshot = self._reattach_locked(holder, link)
            elif join.incarnation and holder.unreachable_since is not None:
                outcome = "replaces"
            else:
                outcome = "refused"
                refusal, snapshot = self._refuse_name_locked(join, holder.entry)
        if outcome == "replaces":
            self.depart(holder.entry.rank, f"replaced by a new process (pid {join.pid} on {join.host})", failed=True,
                        if_unreachable=True)
            return self.join(link, join)
        if outcome == "refused":
            if snapshot is not None:
                self._broadcast(snapshot)
            raise refusal
        log.info("worker %s %s as rank %d at %s (pid %d on %s)", join.name, outcome, rank, join.address, join.pid,
                 join.host)
        if outcome == "joined again":
            metrics.REJOINS.inc()
        self._event(outcome, pb.WorkerEntry(name=join.name, rank=rank))
        self._broadcast(snapshot)
        return snapshot

    def _reattach_locked(self, member: Member, link) -> pb.WorldUpdate:
        """The member's process is back on a new connection: reachable, same rank, nothing lost. Its old
        connection is left to time out by itself: closing it here could wait on a send stuck in it."""
        member.link = link
        member.last_seen = time.monotonic()
        member.unreachable_since = None
        member.entry.unreachable = False
        link.peer_rank = member.entry.rank
        link.peer = f"worker '{member.entry.name}' (rank {member.entry.rank})"
        self._version += 1
        self._changed.notify_all()
        return self._snapshot_locked()

    def _admit_locked(self, link, join: pb.Join) -> tuple:
        """Makes the joining process a member; returns its rank and the new snapshot."""
        members = [m for m in self._members.values() if not m.entry.daemon]
        if not join.daemon and self._static not in (None, bool(join.world_size)):  # every member joined as the first
            raise errors.InvalidArgument(
                "RPC group mixes statically and dynamically initialized members which is not supported: "
                f"'{join.name}' joined {'with' if join.world_size else 'without'} a world_size, the others "
                f"{'without' if join.world_size else 'with'}")
        sizes = {m.world_size for m in members if m.world_size}
        if join.world_size and sizes and join.world_size not in sizes:
            raise errors.InvalidArgument(
                f"world_size {join.world_size} disagrees with the {sizes.pop()} other workers joined with"
            )
        if join.rank >= 0:
            rank = join.rank
            taken = self._members.get(rank)
            if taken is not None:
                raise errors.AlreadyExists(
                    f"rank {rank} is already taken by '{taken.entry.name}' at {taken.entry.address}; "
                    "give each process its own rank"
                )
        else:
            rank = self._fresh_rank_locked(join.name)
        if join.world_size and rank >= join.world_size:
            raise errors.InvalidArgument(f"rank {rank} is out of range for world_size {join.world_size}")
        entry = pb.WorkerEntry(
            name=join.name, rank=rank, address=join.address, daemon=join.daemon, pid=join.pid, host=join.host,
            socket_address=join.socket_address, unix_path=join.unix_path, host_id=join.host_id,
            incarnation=join.incarnation, message_path=join.message_path,
        )
        member = Member(entry, link, join.world_size)
        if not join.daemon and self._static is None:
            self._static = bool(join.world_size)
        self._members[rank] = member
        self._used.add(rank)
        link.peer_rank = rank
        link.peer = f"worker '{join.name}' (rank {rank})"
        self._version += 1
        self._changed.notify_all()
        return rank, self._snapshot_locked()

    def _refuse_name_locked(self, join: pb.Join, holder: pb.WorkerEntry) -> tuple:
        """The error for a join whose name is taken, and the snapshot to broadcast if a world of a
        fixed size can now never complete (those waiting for it learn why at once), else None."""
        refusal = errors.AlreadyExists(
            f"worker name '{join.name}' is not unique: it is already taken by rank {holder.rank} at "
            f"{holder.address} (pid {holder.pid} on {holder.host}); give this worker another name, or stop that one"
        )
        if not (join.world_size and len(self._members) < join.world_size):
            return refusal, None
        self._cannot_form = f"init_rpc failed: {refusal} (rank {join.rank} asked for it too)"
        self._version += 1
        self._changed.notify_all()
        return refusal, self._snapshot_locked()

    def _fresh_rank_locked(self, name: str) -> int:
        """A rank for a member that names none: the one it held before, if it held one under this name
        and it is free; else one nobody has held (ids minted under a rank outlive its holder)."""
        before = next((d.rank for d in reversed(self._departed) if d.name == name), None)
        if before is not None and before not in self._members:
            return before
        rank = next((r for r in range(MAX_RANK + 1) if r not in self._used and r not in self._members), None)
        if rank is None:
            raise errors.ResourceExhausted(f"every one of the {MAX_RANK + 1} ranks has been used in this world")
        return rank

    def heartbeat(self, rank: int, load: Optional[pb.Heartbeat] = None) -> None:
        with self._lock:
            member = self._members.get(rank)
            if member is None:
                return
            member.last_seen = time.monotonic()
            if load is not None:
                member.load = load
            if member.unreachable_since is None:
                return
            member.unreachable_since = None  # heard from again: the link healed
            member.entry.unreachable = False
            self._version += 1
            snapshot = self._snapshot_locked()
        log.warning("worker %s is reachable again", member.label)
        self._event("reachable again", member.entry)
        self._broadcast(snapshot)

    def suspect(self, rank: int, reason: str) -> bool:
        """Marks a member unreachable — suspected, not dead: nothing it holds is released. True if it
        was reachable until now."""
        with self._lock:
            member = self._members.get(rank)
            if member is None or member.unreachable_since is not None:
                return False
            member.unreachable_since = time.monotonic()
            member.entry.unreachable = True
            self._version += 1
            snapshot = self._snapshot_locked()
        log.warning("worker %s is unreachable: %s", member.label, reason)
        self._event("unreachable", member.entry, reason)
        self._broadcast(snapshot)
        return True

    def overdue(self, lease: float) -> List[Member]:
        """Members unreachable for longer than ``lease``: dead by then."""
        now = time.monotonic()
        with self._lock:
            return [m for m in self._members.values()
                    if m.unreachable_since is not None and now - m.unreachable_since > lease]

    def depart(self, rank: int, reason: str, failed: bool, if_unreachable: bool = False) -> Optional[Member]:
        """Removes a member that left or died, tells everyone, and lets the rest of the coordinator react.
        ``if_unreachable``: only if it still is (it may have come back since it was found overdue).
        Returns the member removed, if any."""
        with self._lock:
            member = self._members.get(rank)
            if member is None or (if_unreachable and member.unreachable_since is None):
                return None
            del self._members[rank]
            departure = pb.Departure(name=member.entry.name, rank=rank, reason=reason, failed=failed,
                                     incarnation=member.entry.incarnation)
            self._departed.append(departure)
            del self._departed[:-_DEPARTED_MEMORY]
            if not any(m.world_size for m in self._members.values()):  # that world is gone: another may form
                self._cannot_form, self._asked = "", set()
            self._version += 1
            snapshot = self._snapshot_locked()
            completed = self._check_barriers_locked()
            self._changed.notify_all()
        (log.warning if failed else log.info)(
            "worker %s (rank %d) %s: %s", member.entry.name, rank, "failed" if failed else "left", reason
        )
        metrics.DEPARTURES.labels("died" if failed else "left").inc()
        self._event("died" if failed else "left", member.entry, reason)
        self._broadcast(snapshot)
        self._release(completed)
        self._on_departed(departure)
        return member

    def stale(self, timeout: float) -> List[Member]:
        """Reachable members not heard from within ``timeout``."""
        now = time.monotonic()
        with self._lock:
            return [m for m in self._members.values() if m.unreachable_since is None and now - m.last_seen > timeout]

    def _broadcast(self, snapshot: pb.WorldUpdate) -> None:
        with self.sending:
            for member in self.members():
                member.link.try_notify(pb.Request(world_update=snapshot))

    # ------------------------------------------------------------------ barriers

    def barrier(self, rank: int, name: str) -> Future:
        """Resolves once every live non-daemon member has entered barrier ``name``."""
        waiter: Future = Future()
        with self._lock:
            self._barriers.setdefault(name, set()).add(rank)
            self._barrier_waiters.setdefault(name, []).append(waiter)
            completed = self._check_barriers_locked()
        self._release(completed)
        return waiter

    def _check_barriers_locked(self) -> List[Future]:
        needed = {r for r, m in self._members.items() if not m.entry.daemon}
        done: List[Future] = []
        for name in list(self._barriers):
            arrived = self._barriers[name] & set(self._members)
            if needed <= arrived:
                del self._barriers[name]
                done.extend(self._barrier_waiters.pop(name, []))
        return done

    @staticmethod
    def _release(waiters: List[Future]) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
