"""The coordinator's record of distributed autograd contexts: participants, passes, which leaves got gradients."""

from __future__ import annotations

import threading
from typing import Dict, Iterable, List, Mapping, Set

from distautograd.ids import rank_of
from distautograd.protocol.v1 import messages_pb2 as pb


class ContextRecord:
    __slots__ = ("participants", "passes", "leaves")

    def __init__(self) -> None:
        self.participants: Set[int] = set()
        self.passes = 0
        self.leaves: Dict[int, int] = {}


class ContextRegistry:
    def __init__(self) -> None:
        self._records: Dict[int, ContextRecord] = {}
        self._lock = threading.Lock()

    def closed(self, context_id: int) -> None:
        with self._lock:
            self._records.pop(context_id, None)

    def pass_began(self, context_id: int, participants: Iterable[int]) -> None:
        """A backward pass starts: the first one in a context opens its record."""
        with self._lock:
            record = self._records.get(context_id)
            if record is None:
                record = self._records[context_id] = ContextRecord()
                record.participants.add(rank_of(context_id))
            record.passes += 1
            record.participants.update(participants)

    def pass_ended(self, context_id: int, leaves: Mapping[int, int]) -> None:
        with self._lock:
            record = self._records.get(context_id)
            if record is None:
                return
            for rank, count in leaves.items():
                record.leaves[rank] = max(record.leaves.get(rank, 0), count)

    def on_departed(self, rank: int) -> List[int]:
        """Contexts created by ``rank``: the caller releases them after the time-to-live."""
        with self._lock:
            return [cid for cid in self._records if rank_of(cid) == rank]

    def status(self, in_flight) -> List[pb.ContextStatus]:
        with self._lock:
            return [
                pb.ContextStatus(
                    context_id=cid,
                    participants=sorted(r.participants),
                    passes=r.passes,
                    passes_in_flight=in_flight(cid),
                    leaves_with_gradients=dict(r.leaves),
                )
                for cid, r in sorted(self._records.items())
            ]
