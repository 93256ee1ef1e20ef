"""Distributed autograd contexts on one worker: send and recv points, accumulated gradients, the peers involved."""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Set

import torch
from torch.autograd.graph import GradientEdge, get_gradient_edge

from distautograd import errors
from distautograd.ids import rank_of
from distautograd.protocol.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from distautograd.runtime.agent import Agent

log = logging.getLogger("distautograd")

# Every recv point hangs off this one leaf, so its output is a non-leaf tensor users can modify in
# place, like torch's. The anchor never receives a gradient: backward stops at recv points.
_ANCHOR = torch.empty(0, requires_grad=True)
_RELEASED_MEMORY = 100_000
RELEASE_DELAY = 0.01
COORDINATOR = -1


class RecvRpc(torch.autograd.Function):
    """The recv point of a tensor that arrived inside a context; its node shows as RecvRpcBackward."""

    @staticmethod
    def forward(ctx, anchor, holder):
        return holder[0]

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(
            "this graph contains a tensor received inside a distributed autograd context; run its "
            "backward with distautograd.autograd.backward(context_id, roots), not a local backward()"
        )


class SendPoint(NamedTuple):
    edge: GradientEdge
    dest: int


class RecvPoint(NamedTuple):
    node: object
    src: int


class Context:
    """One distributed autograd context as this worker sees it."""

    def __init__(self, context_id: int):
        self.id = context_id
        self.creator = rank_of(context_id)
        self.lock = threading.Lock()
        self.send_points: Dict[int, SendPoint] = {}
        self.recv_points: Dict[int, RecvPoint] = {}
        self.grads: Dict[torch.Tensor, torch.Tensor] = {}
        self.peers: Set[int] = set()  # ranks this worker exchanged tensors with in this context
        self.known: Set[int] = set()  # ranks further away that take part, as callees reported
        self.coordinated = False  # a backward pass through the coordinator ran from here
        self.mint = None  # set by the store

    def add_send_point(self, tensor: torch.Tensor, dest: int) -> int:
        message_id = self.mint()
        edge = get_gradient_edge(tensor)
        with self.lock:
            self.send_points[message_id] = SendPoint(edge, dest)
            self.peers.add(dest)
        return message_id

    def add_recv_point(self, tensor: torch.Tensor, message_id: int, src: int) -> torch.Tensor:
        out = RecvRpc.apply(_ANCHOR, [tensor])
        with self.lock:
            self.recv_points[message_id] = RecvPoint(out.grad_fn, src)
            self.peers.add(src)
        return out

    def participants(self) -> Set[int]:
        """Every other rank this worker knows takes part in the context."""
        with self.lock:
            return self.peers | self.known

    def learn(self, ranks) -> None:
        with self.lock:
            self.known.update(ranks)

    def accumulate(self, leaf_grads: Dict[torch.Tensor, torch.Tensor]) -> None:
        with self.lock:
            for leaf, grad in leaf_grads.items():
                previous = self.grads.get(leaf)
                self.grads[leaf] = grad if previous is None else previous + grad

    def gradients(self) -> Dict[torch.Tensor, torch.Tensor]:
        with self.lock:
            return dict(self.grads)


class ContextStore:
    """The contexts this worker takes part in, and which one each thread is working in."""

    def __init__(self, agent: "Agent"):
        self.agent = agent
        self._contexts: Dict[int, Context] = {}
        self._released: "collections.OrderedDict[int, None]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        # Releases go out in batches, a moment later: one message per peer, not one per context.
        self._outgoing: Dict[int, List[int]] = {}
        self._flush_scheduled = False

    # ------------------------------------------------------------------ the thread's context

    def current(self) -> Optional[Context]:
        return getattr(self._local, "context", None)

    def swap(self, ctx: Optional[Context]) -> Optional[Context]:
        """Makes ``ctx`` the thread's context; returns the one it replaces (to swap back)."""
        previous = getattr(self._local, "context", None)
        self._local.context = ctx
        return previous

    def create(self) -> Context:
        if self.current() is not None:
            raise RuntimeError(
                f"this thread already has distributed autograd context {self.current().id}; "
                "contexts cannot nest in one thread"
            )
        ctx = self._new(self.agent.mint())
        self._local.context = ctx
        return ctx

    def exit(self, ctx: Context) -> None:
        """Ends the thread's context and releases it on every worker that took part."""
        self._local.context = None
        if ctx.coordinated:
            self._queue_release(COORDINATOR, ctx.id)  # the coordinator keeps a record of contexts with passes
        self.release(ctx.id)

    def _new(self, context_id: int) -> Context:
        ctx = Context(context_id)
        ctx.mint = self.agent.mint
        with self._lock:
            self._contexts[context_id] = ctx
        return ctx

    # ------------------------------------------------------------------ lookup

    def get(self, context_id: int) -> Context:
        with self._lock:
            ctx = self._contexts.get(context_id)
        if ctx is None:
            raise RuntimeError(f"Could not find autograd context with id: {context_id} on {self.agent.name}")
        return ctx

    def for_incoming(self, context_id: int, peer: int) -> Context:
        """The context a message from ``peer`` names, made on first use."""
        with self._lock:
            ctx = self._contexts.get(context_id)
            if ctx is None:
                if context_id in self._released:
                    raise errors.FailedPrecondition(
                        f"distributed autograd context {context_id} was already released on {self.agent.name}"
                    )
                ctx = Context(context_id)
                ctx.mint = self.agent.mint
                self._contexts[context_id] = ctx
        with ctx.lock:
            ctx.peers.add(peer)
        return ctx

    # ------------------------------------------------------------------ release

    def release(self, context_id: int, sender: Optional[int] = None) -> bool:
        """Drops the context here and tells every peer it talked to (except ``sender``) to do the same."""
        with self._lock:
            ctx = self._contexts.pop(context_id, None)
            self._released[context_id] = None
            while len(self._released) > _RELEASED_MEMORY:
                self._released.popitem(last=False)
        if ctx is None:
            return False
        self.agent.engine.drop_context(context_id)
        for peer in ctx.peers - {self.agent.rank, sender}:
            self._queue_release(peer, context_id)
        return True

    def _queue_release(self, peer: int, context_id: int) -> None:
        with self._lock:
            self._outgoing.setdefault(peer, []).append(context_id)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self.agent.deadlines.schedule(RELEASE_DELAY, self.flush_releases)

    def flush_releases(self) -> None:
        with self._lock:
            outgoing, self._outgoing = self._outgoing, {}
            self._flush_scheduled = False
        for peer, context_ids in outgoing.items():
            try:
                if peer == COORDINATOR:
                    self.agent.coordinator_notify(pb.Request(context_event=pb.ContextEvent(closed=context_ids)))
                else:
                    self.agent.notify(peer, pb.Request(release_context=pb.ReleaseContext(context_ids=context_ids)))
            except Exception as exc:  # a departed peer has nothing left to release
                log.debug("could not release contexts on rank %d: %s", peer, exc)

    def handle_release(self, link, body: pb.ReleaseContext, attachments) -> None:
        for context_id in body.context_ids:
            self.release(context_id, sender=link.peer_rank)

    def on_departed(self, rank: int) -> None:
        """Contexts created by a worker that is gone are released after the time-to-live."""
        with self._lock:
            orphans = [cid for cid in self._contexts if rank_of(cid) == rank]
        if orphans:
            ttl = self.agent.options.context_ttl
            log.info("releasing %d context(s) of departed rank %d in %g s", len(orphans), rank, ttl)
            self.agent.deadlines.schedule(ttl, lambda: [self.release(cid) for cid in orphans])

    def count(self) -> int:
        with self._lock:
            return len(self._contexts)

    def ids(self) -> List[int]:
        with self._lock:
            return list(self._contexts)
