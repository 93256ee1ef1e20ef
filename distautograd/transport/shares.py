"""Per-peer shares of one bounded resource: no peer takes more than its share, all together no more than the whole."""

from __future__ import annotations

import threading
from typing import Dict, Optional


class Shares:
    """Counts what each peer holds of one resource (calls waiting, streams, contexts, ...).

    ``take(peer)`` gives one unit or says why not: the peer is at ``per_peer``, or everyone together
    is at ``total`` (None: no limit beyond the shares). A peer over its share is refused; every other
    peer keeps its own."""

    def __init__(self, resource: str, per_peer: int, total: Optional[int] = None):
        if per_peer < 1 or (total is not None and total < per_peer):
            raise ValueError(f"{resource}: a share of {per_peer} under a whole of {total} cannot work")
        self.resource = resource
        self.per_peer = per_peer
        self.total = total
        self._held: Dict[str, int] = {}
        self._sum = 0
        self._lock = threading.Lock()

    def take(self, peer: str, amount: int = 1) -> Optional[str]:
        """Takes ``amount`` units for ``peer``; returns None, or the refusal (naming the resource and its
        limit). One take bigger than the whole share is refused too: it could never fit."""
        with self._lock:
            mine = self._held.get(peer, 0)
            if mine + amount > self.per_peer:
                return (f"{peer} holds {mine} {self.resource} here already and asked for {amount} more; its share "
                        f"is {self.per_peer} per peer: wait for some to finish" if amount > 1 else
                        f"{peer} holds {mine} {self.resource} here already, its share (limit {self.per_peer} "
                        f"per peer); wait for some to finish")
            if self.total is not None and self._sum + amount > self.total:
                return f"{self._sum} {self.resource} are held here already (limit {self.total} in all)"
            self._held[peer] = mine + amount
            self._sum += amount
        return None

    def count(self, peer: str, amount: int = 1) -> None:
        """Counts ``amount`` for ``peer`` without refusing: for what already exists when this process
        hears of it (a fork a peer made), which refusing would not undo."""
        with self._lock:
            self._held[peer] = self._held.get(peer, 0) + amount
            self._sum += amount

    def give_back(self, peer: str, amount: int = 1) -> None:
        with self._lock:
            mine = self._held.get(peer, 0)
            amount = min(amount, mine)  # never below zero, whatever is given back twice
            if mine - amount <= 0:
                self._held.pop(peer, None)
            else:
                self._held[peer] = mine - amount
            self._sum -= amount

    def held(self, peer: str) -> int:
        with self._lock:
            return self._held.get(peer, 0)

    def snapshot(self) -> Dict[str, int]:
        """What each peer holds now (peers holding nothing are left out)."""
        with self._lock:
            return dict(self._held)


def rank_key(rank: int) -> str:
    """How a peer known only by its rank (contexts, RRef forks) is named in a share."""
    return f"rank {rank}"
