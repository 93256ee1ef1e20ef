"""Who is out there: the members this worker knows (name, rank, address) and those that have left."""

from __future__ import annotations

import threading
from typing import Dict, List, NamedTuple, Optional, Union

from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.encoding.allowlist import trusted_global


NAME_CHARACTERS = "letters, digits and _ - . :"
MAX_NAME = 128


def name_problem(name) -> Optional[str]:
    """What is wrong with a worker name (torch's rules, and '.'), or None."""
    if not isinstance(name, str) or not name:
        return "Worker name must be non-empty"
    if len(name) >= MAX_NAME:
        return f"Worker name must be shorter than {MAX_NAME} characters, got {len(name)}"
    if not all(c.isascii() and (c.isalnum() or c in "_-.:") for c in name):
        return f"Worker name must match ^[A-Za-z0-9_.:-]*$ ({NAME_CHARACTERS}), got {name!r}"
    return None


class _Info(NamedTuple):
    name: str
    id: int


@trusted_global
class WorkerInfo(_Info):
    """A worker's name and id (its rank), as torch.distributed.rpc.WorkerInfo."""

    __slots__ = ()

    def __new__(cls, name: str, id: int):
        problem = name_problem(name)
        if problem is not None:
            raise RuntimeError(problem)
        return super().__new__(cls, name, id)

    def __repr__(self) -> str:
        return f"WorkerInfo(id={self.id}, name={self.name})"

    def __getnewargs__(self):
        return tuple(self)


Destination = Union[str, int, WorkerInfo]


class WorldView:
    """This worker's copy of the membership the coordinator publishes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.version = 0
        self._by_name: Dict[str, pb.WorkerEntry] = {}
        self._by_rank: Dict[int, pb.WorkerEntry] = {}
        self._departed: Dict[int, pb.Departure] = {}
        self._seen: set = set()  # (rank, name, incarnation) of every departure applied: each is applied once
        self.cannot_form = ""  # why the world of a fixed size this worker waits for will never be complete
        self.most = 0  # the most members seen at once: a world that was complete was, even if some left since
        self.size = 0  # the size of the world while it forms (init_rpc with a world_size), else 0
        self.formed_within = 0.0  # how long a name asked for while the world forms may take to appear

    def update(self, world: pb.WorldUpdate) -> List[pb.Departure]:
        """Applies a newer snapshot; returns the departures it brought."""
        with self._cond:
            if world.version and world.version <= self.version:
                return []
            self.version = world.version
            self.cannot_form = world.cannot_form
            self._by_name = {w.name: w for w in world.workers}
            self._by_rank = {w.rank: w for w in world.workers}
            self.most = max(self.most, len(self._by_rank))
            new = [d for d in world.departed if (d.rank, d.name, d.incarnation) not in self._seen]
            self._seen.update((d.rank, d.name, d.incarnation) for d in new)
            for d in world.departed:
                if d.rank not in self._by_rank:
                    self._departed[d.rank] = d
            self._cond.notify_all()
            return new

    def replace(self, world: pb.WorldUpdate) -> None:
        """Starts over from a new coordinator's snapshot (its versions count from the start again)."""
        with self._cond:
            self.version = 0
        self.update(world)

    def wait_for(self, predicate, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def members(self) -> List[pb.WorkerEntry]:
        with self._cond:
            return sorted(self._by_rank.values(), key=lambda w: w.rank)

    def entry(self, rank: int) -> Optional[pb.WorkerEntry]:
        return self._by_rank.get(rank)

    def departure(self, rank: int) -> Optional[pb.Departure]:
        return self._departed.get(rank)

    def rank_of(self, name: str) -> int:
        """The rank of the worker called ``name`` (also after it has gone); -1 if unknown."""
        entry = self._by_name.get(name) or next((d for d in self._departed.values() if d.name == name), None)
        return entry.rank if entry is not None else -1

    def name_of(self, rank: int) -> str:
        """``rank``'s worker name, also after it has gone ("rank N" if never known)."""
        entry = self._by_rank.get(rank) or self._departed.get(rank)
        return entry.name if entry is not None else f"rank {rank}"

    def label(self, rank: int) -> str:
        """How messages name ``rank``: "'worker1' (rank 1)", also after it has gone."""
        entry = self._by_rank.get(rank) or self._departed.get(rank)
        return f"'{entry.name}' (rank {rank})" if entry is not None else f"rank {rank}"

    def describe(self) -> str:
        members = self.members()
        return ", ".join(f"{w.name} (rank {w.rank})" for w in members) or "none"

    def resolve(self, to: Destination) -> WorkerInfo:
        """The worker ``to`` names: a name, a rank or a WorkerInfo, as torch's rpc verbs take it.
        A worker that has gone still resolves (a call to it fails, saying how it went, as in
        torch); one never known raises UnknownWorker listing the known ones."""
        if isinstance(to, WorkerInfo):
            found = self._by_rank.get(to.id) or self._departed.get(to.id)
            if found is None or found.name != to.name:
                raise self._unknown(repr(to))
        elif isinstance(to, str):
            return self.info_of(to)
        elif isinstance(to, int) and not isinstance(to, bool):
            found = self._by_rank.get(to) or self._departed.get(to)
            if found is None and self._forming() and 0 <= to < self.size:
                self.wait_for(lambda: to in self._by_rank or not self._forming(), self.formed_within)
                found = self._by_rank.get(to)
            if found is None:
                raise self._unknown(f"rank {to}")
        else:
            raise ValueError(f"Cannot get WorkerInfo from name {to!r}: a destination is a worker name, a rank "
                             "or a WorkerInfo")
        return WorkerInfo._make((found.name, found.rank))

    def info_of(self, name: str) -> WorkerInfo:
        """The WorkerInfo of the worker called ``name``, also after it has gone."""
        found = self._by_name.get(name) or next((d for d in self._departed.values() if d.name == name), None)
        if found is None and self._forming():  # a peer may call before this worker has heard of everyone
            self.wait_for(lambda: name in self._by_name or not self._forming(), self.formed_within)
            found = self._by_name.get(name)
        if found is None:
            raise self._unknown(repr(name))
        return WorkerInfo._make((found.name, found.rank))

    def _forming(self) -> bool:
        return bool(self.size) and self.most < self.size and not self.cannot_form

    def _unknown(self, what: str) -> "UnknownWorker":
        return UnknownWorker(f"could not find destination worker {what}: known workers are {self.describe()}")


class UnknownWorker(RuntimeError, ValueError):
    """A worker this process never heard of (a RuntimeError as torch's; a ValueError, as before)."""
