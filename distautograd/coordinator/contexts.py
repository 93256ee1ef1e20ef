"""The coordinator's record of distributed autograd contexts: participants, passes, which leaves got gradients."""

from __future__ import annotations

import threading
from typing import Dict, Iterable, List, Set

from distautograd.ids import rank_of
from distautograd.protocol.v1 import messages_pb2 as pb


class ContextRecord:
    __slots__ = ("participants", "passes", "in_flight", "leaves")

    def __init__(self) -> None:
        self.participants: Set[int] = set()
        self.passes = 0
        self.in_flight = 0
        self.leaves: Dict[int, Set[int]] = {}


class ContextRegistry:
    def __init__(self) -> None:
        self._records: Dict[int, ContextRecord] = {}
        self._lock = threading.Lock()

    def closed(self, context_id: int) -> None:
        with self._lock:
            self._records.pop(context_id, None)

    def pass_began(self, context_id: int) -> None:
        """A backward pass starts: the first one in a context opens its record."""
        with self._lock:
            record = self._records.get(context_id)
            if record is None:
                record = self._records[context_id] = ContextRecord()
                record.participants.add(rank_of(context_id))
            record.passes += 1
            record.in_flight += 1

    def add_participants(self, context_id: int, ranks: Iterable[int]) -> None:
        with self._lock:
            record = self._records.get(context_id)
            if record is not None:
                record.participants.update(ranks)

    def pass_ended(self, context_id: int, leaves: Dict[int, List[int]]) -> None:
        with self._lock:
            record = self._records.get(context_id)
            if record is None:
                return
            record.in_flight = max(0, record.in_flight - 1)
            for rank, ids in leaves.items():
                record.leaves.setdefault(rank, set()).update(ids)

    def on_departed(self, rank: int) -> List[int]:
        """Contexts created by ``rank``: the caller releases them after the time-to-live."""
        with self._lock:
            return [cid for cid in self._records if rank_of(cid) == rank]

    def count(self) -> int:
        with self._lock:
            return len(self._records)

    def status(self) -> List[pb.ContextStatus]:
        with self._lock:
            return [
                pb.ContextStatus(
                    context_id=cid,
                    participants=sorted(r.participants),
                    passes=r.passes,
                    passes_in_flight=r.in_flight,
                    leaves_with_gradients={rank: len(ids) for rank, ids in r.leaves.items()},
                )
                for cid, r in sorted(self._records.items())
            ]
