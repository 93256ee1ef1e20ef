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

    def take(self, peer: str) -> Optional[str]:
        """Takes one unit for ``peer``; returns None, or the refusal (naming the resource and its limit)."""
        with self._lock:
            mine = self._held.get(peer, 0)
            if mine >= self.per_peer:
                return (f"{peer} holds {mine} {self.resource} here already, its share (limit {self.per_peer} "
                        f"per peer); wait for some to finish")
            if self.total is not None and self._sum >= self.total:
                return f"{self._sum} {self.resource} are held here already (limit {self.total} in all)"
            self._held[peer] = mine + 1
            self._sum += 1
        return None

    def give_back(self, peer: str) -> None:
        with self._lock:
            mine = self._held.get(peer, 0)
            if mine <= 0:
                return
            if mine == 1:
                del self._held[peer]
            else:
                self._held[peer] = mine - 1
            self._sum -= 1

    def held(self, peer: str) -> int:
        with self._lock:
            return self._held.get(peer, 0)

    def snapshot(self) -> Dict[str, int]:
        """What each peer holds now (peers holding nothing are left out)."""
        with self._lock:
            return dict(self._held)
