"""The coordinator's notices applied on a worker: a member that became unreachable fails what waits on
it here (nothing is released); one that died or left has what it held released — but never this
process's own death (it joins again instead), nor an earlier life's death to the process that holds
that rank now."""

from __future__ import annotations

import logging

from distautograd import errors
from distautograd.ids import IdMint
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.backward import Backward
from distautograd.runtime.contexts import ContextStore
from distautograd.runtime.peers import Peers
from distautograd.runtime.rrefs import RRefStore
from distautograd.runtime.world import WorldView

log = logging.getLogger("distautograd")
FRESHER_BY = 1.0  # seconds this worker's news of a peer must beat the coordinator's to outweigh it


class Notices:
    def __init__(self, name: str, incarnation: int, mint: IdMint, world: WorldView, peers: Peers, rrefs: RRefStore,
                 contexts: ContextStore, backward: Backward):
        self.name = name
        self.incarnation = incarnation
        self._mint = mint
        self._world = world
        self._peers = peers
        self._rrefs = rrefs
        self._contexts = contexts
        self._backward = backward

    def handle_world_update(self, link, update: pb.WorldUpdate, attachments) -> None:
        suspected = {w.rank for w in self._world.members() if w.unreachable}
        departures = self._world.update(update)
        for entry in self._world.members():
            if entry.unreachable and entry.rank not in suspected and entry.rank != self._mint.rank:
                # The coordinator has not heard from it: what waits on it here fails now, naming it;
                # nothing it holds is released, and the next call tries it again. Unless this worker
                # heard from it since: then the coordinator is the one that was cut off (its verdict is
                # stale), and the peer's own connections say whether it is silent.
                if self._peers.silence(entry.rank) + FRESHER_BY < entry.silent_ms / 1000:
                    log.info("worker %s (rank %d) is unreachable from the coordinator, not from here", entry.name,
                             entry.rank)
                    continue
                log.warning("worker %s (rank %d) is unreachable", entry.name, entry.rank)
                self._peers.close_peer(entry.rank, errors.Unreachable(
                    f"worker '{entry.name}' (rank {entry.rank}) is unreachable: the coordinator stopped hearing its "
                    "heartbeat", worker=entry.name))
        for gone in departures:
            how = "died" if gone.failed else "left"
            successor = self._world.entry(gone.rank)
            if gone.name == self.name and gone.incarnation == self.incarnation:
                # A verdict about this very process (the coordinator lost sight of it): never applied
                # to itself. It joins again as soon as its connection to the coordinator is back.
                log.warning("%s ignores the coordinator's notice that it %s: %s", self.name, how, gone.reason)
                continue
            if successor is not None and successor.incarnation != gone.incarnation:
                # An older life of a rank a newer process holds now: what is minted under that rank is
                # the new one's, so nothing is released by rank.
                log.info("worker %s (rank %d), an earlier process, %s: %s", gone.name, gone.rank, how, gone.reason)
                continue
            (log.warning if gone.failed else log.info)("worker %s (rank %d) %s: %s", gone.name, gone.rank, how,
                                                       gone.reason)
            self._peers.close_peer(
                gone.rank, errors.Unavailable(f"worker '{gone.name}' (rank {gone.rank}) {how}: {gone.reason}",
                                              worker=gone.name)
            )
            self._rrefs.on_departed(gone.rank)
            self._contexts.on_departed(gone.rank)
            self._backward.failures.on_departed(gone)
