"""The coordinator's record of backward passes in flight: who takes part, so a departure aborts the right ones.

Roots tell the coordinator when a pass starts (with its participants) and ends; the pass never
waits for it. When a member leaves or dies, every pass it takes part in is aborted on its root
and the other participants, with an error naming the worker.
"""

from __future__ import annotations

import threading
from typing import Dict, List, NamedTuple, Set, Tuple

from distautograd.protocol.v1 import messages_pb2 as pb


class PassRecord(NamedTuple):
    context_id: int
    pass_id: int
    root: int
    participants: Set[int]


class PassRegistry:
    def __init__(self) -> None:
        self._passes: Dict[Tuple[int, int], PassRecord] = {}
        self._lock = threading.Lock()

    def started(self, root: int, event: pb.PassEvent) -> None:
        record = PassRecord(event.context_id, event.pass_id, root, set(event.participants) | {root})
        with self._lock:
            self._passes[(event.context_id, event.pass_id)] = record

    def ended(self, event: pb.PassEvent) -> None:
        with self._lock:
            self._passes.pop((event.context_id, event.pass_id), None)

    def in_flight(self, context_id: int) -> int:
        with self._lock:
            return sum(1 for key in self._passes if key[0] == context_id)

    def involving(self, rank: int) -> List[PassRecord]:
        """Passes ``rank`` takes part in; they are forgotten here (the caller aborts them)."""
        with self._lock:
            found = [record for record in self._passes.values() if rank in record.participants]
            for record in found:
                del self._passes[(record.context_id, record.pass_id)]
        return found
