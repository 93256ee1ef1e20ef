"""Sends world snapshots to members, one sender per connection and only the newest snapshot, so a
connection whose sends are stuck (its peer cut off by a partition) delays no other member and no
Join, heartbeat or verdict of the coordinator."""

from __future__ import annotations

import logging
import threading
import time
from typing import Dict, Iterable, Set

from distautograd.protocol.v1 import messages_pb2 as pb

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._newest: Dict[object, pb.WorldUpdate] = {}  # per link: the snapshot not yet handed to it
        self._sending: Set[object] = set()  # links a sender thread is working on

    def post(self, links: Iterable, snapshot: pb.WorldUpdate) -> None:
        """Queues ``snapshot`` for each link, replacing an older one still queued (a member applies
        only the newest version, and each snapshot holds the whole world), and returns at once."""
        start = []
        with self._lock:
            for link in links:
                queued = self._newest.get(link)
                if queued is None or queued.version <= snapshot.version:
                    self._newest[link] = snapshot
                if link not in self._sending:
                    self._sending.add(link)
                    start.append(link)
        for link in start:
            threading.Thread(target=self._drain, args=(link,), name="distautograd-announce", daemon=True).start()

    def _drain(self, link) -> None:
        while True:
            with self._lock:
                snapshot = self._newest.pop(link, None)
                if snapshot is None:
                    self._sending.discard(link)
                    self._lock.notify_all()
                    return
            try:
                link.try_notify(pb.Request(world_update=snapshot))
            except Exception:  # a sender that dies would leave the link marked busy for good
                log.exception("world snapshot to %s failed", getattr(link, "peer", link))

    def flush(self, timeout: float) -> bool:
        """Waits (at most ``timeout``) until every queued snapshot has been handed to its connection;
        False if some connection is still stuck."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.info("world snapshots to %d connection(s) still unsent after %g s", len(self._sending), timeout)
                    return False
                self._lock.wait(left)
        return True
