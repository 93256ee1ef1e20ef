"""Who is out there: the members this worker knows (name, rank, address) and those that have left."""

from __future__ import annotations

import threading
from typing import Dict, List, NamedTuple, Optional, Union

from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.encoding.allowlist import trusted_global


@trusted_global
class WorkerInfo(NamedTuple):
    """A worker's name and id (its rank), as torch.distributed.rpc.WorkerInfo."""

    name: str
    id: int

    def __repr__(self) -> str:
        return f"WorkerInfo(id={self.id}, name={self.name})"


Destination = Union[str, int, WorkerInfo]


class WorldView:
    """This worker's copy of the membership the coordinator publishes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.version = 0
        self._by_name: Dict[str, pb.WorkerEntry] = {}
        self._by_rank: Dict[int, pb.WorkerEntry] = {}
        self._departed: Dict[int, pb.Departure] = {}

    def update(self, world: pb.WorldUpdate) -> List[pb.Departure]:
        """Applies a newer snapshot; returns the departures it brought."""
        with self._cond:
            if world.version and world.version <= self.version:
                return []
            self.version = world.version
            self._by_name = {w.name: w for w in world.workers}
            self._by_rank = {w.rank: w for w in world.workers}
            new = [d for d in world.departed if d.rank not in self._departed or d.name != self._departed[d.rank].name]
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
        """The member ``to`` names: a name, a rank or a WorkerInfo. ValueError lists the known ones."""
        if isinstance(to, WorkerInfo):
            entry = self._by_rank.get(to.id)
            if entry is None or entry.name != to.name:
                raise self._unknown(repr(to), to.id)
        elif isinstance(to, str):
            entry = self._by_name.get(to)
            if entry is None:
                gone = next((d for d in self._departed.values() if d.name == to), None)
                raise self._unknown(repr(to), gone.rank if gone else None)
        elif isinstance(to, int) and not isinstance(to, bool):
            entry = self._by_rank.get(to)
            if entry is None:
                raise self._unknown(f"rank {to}", to)
        else:
            raise TypeError(f"a destination must be a worker name, a rank or a WorkerInfo, not {type(to).__name__}")
        return WorkerInfo(entry.name, entry.rank)

    def _unknown(self, what: str, rank: Optional[int]) -> ValueError:
        gone = self._departed.get(rank) if rank is not None else None
        if gone is not None:
            how = "died" if gone.failed else "left"
            return ValueError(
                f"worker {what} {how} ({gone.reason}); live workers: {self.describe()}"
            )
        return ValueError(f"unknown worker {what}; known workers: {self.describe()}")
