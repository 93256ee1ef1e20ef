"""After a silence: which contexts a peer created are still open there, so none is left behind here.

A context's creator releases it on every worker it reached. A release written to a connection just
before the connection went silent is lost with it, and the holder would keep the context (and the
passes in it) for good. So when a connection to a peer breaks because it stopped answering, this
worker asks that peer, once it answers again, which of the contexts it created are still open,
and releases the rest here. While the peer stays unreachable it asks again every few seconds;
once the peer is gone for good, its contexts go by the TTL as any dead creator's.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Set

from distautograd import errors
from distautograd.ids import rank_of
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.contexts import ContextStore
from distautograd.runtime.peers import Peers

log = logging.getLogger("distautograd")

ASK_EVERY = 2.0  # seconds between asks while the peer is still unreachable
ASK_TIMEOUT = 5.0


class Reconciler:
    def __init__(self, contexts: ContextStore, peers: Peers, stopping: threading.Event,
                 is_member: Callable[[int], bool]):
        self._contexts = contexts
        self._peers = peers
        self._stopping = stopping
        self._is_member = is_member
        self._asking: Set[int] = set()  # peers a thread is asking now
        self._lock = threading.Lock()

    def on_lost(self, rank: int, error: BaseException) -> None:
        """A connection to ``rank`` broke: if for silence, ask it about its contexts once it answers."""
        if not isinstance(error, errors.Unreachable) or rank < 0:
            return
        with self._lock:
            if rank in self._asking:
                return
            self._asking.add(rank)
        threading.Thread(target=self._ask_until_answered, args=(rank,), name="distautograd-reconcile",
                         daemon=True).start()

    def _ask_until_answered(self, rank: int) -> None:
        try:
            while not self._stopping.wait(ASK_EVERY):
                held = [cid for cid in self._contexts.ids() if rank_of(cid) == rank]
                if not held or not self._is_member(rank):
                    return
                try:
                    response, _ = self._peers.request(
                        rank, pb.Request(open_contexts=pb.OpenContexts(context_ids=held)), (), ASK_TIMEOUT).result()
                except (errors.Unavailable, errors.DeadlineExceeded) as exc:  # still unreachable: ask again
                    log.debug("asking rank %d about its contexts again in %g s: %s", rank, ASK_EVERY, exc)
                    continue
                except Exception as exc:  # it answered, with a refusal: asking again would not help
                    log.info("rank %d could not say which of its contexts are open: %s", rank, exc)
                    return
                still_open = set(response.open_contexts.context_ids)
                closed = [cid for cid in held if cid not in still_open]
                if closed:
                    log.info("releasing %d context(s) rank %d closed while it was unreachable", len(closed), rank)
                for context_id in closed:
                    self._contexts.release(context_id, sender=rank)
                return
        finally:
            with self._lock:
                self._asking.discard(rank)

    def handle_open_contexts(self, link, body: pb.OpenContexts, attachments) -> pb.Response:
        """Which of the contexts asked about (created here) are still open here."""
        held = set(self._contexts.ids())
        return pb.Response(open_contexts=pb.OpenContexts(
            context_ids=[cid for cid in body.context_ids if cid in held and rank_of(cid) == self._contexts.rank]))
