"""Distributed autograd contexts on this worker: send and recv points, accumulated gradients, the peers to release.

Every tensor that requires grad and crosses to another worker inside a context gets a send point
here and a recv point there, tagged with one message id. The send point remembers where a
gradient coming back enters this worker's graph, and when it was sent (see engine.local_pass
for why); the tensor carries what gradient reaching it would set off further on
(engine.activations), and the recv point keeps that.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import torch
from torch.autograd.graph import GradientEdge

from distautograd import errors
from distautograd.engine import activations, nodes, order
from distautograd.engine.activations import Activation, Activations
from distautograd.engine.slots import GradStore
from distautograd.ids import IdMint, rank_of
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.shares import Shares, rank_key

log = logging.getLogger("distautograd")

_RELEASED_MEMORY = 100_000
RELEASE_DELAY = 0.01
FLUSHER_IDLE = 5.0  # seconds the release thread waits for more before it ends
MAX_WAITING_RELEASES = 10000  # context ids kept per unreachable peer
RELEASE_RETRY = 1.0  # seconds between tries to release contexts on a peer that is unreachable for now
COORDINATOR = -1

Notify = Callable[[int, pb.Request], None]  # (rank, or COORDINATOR, request); raises when it cannot go


class SendPoint(NamedTuple):
    edge: GradientEdge
    dest: int
    key: float  # where a gradient from the receiver sorts among local ones (engine.local_pass, engine.order)
    context_id: int


class RecvPoint:
    """What the engine needs of a recv point: its message id, its node's anchor to capture, its activation."""

    __slots__ = ("message_id", "src", "anchor", "activation", "context_id", "node")

    def __init__(self, message_id: int, src: int, activation: Activation, context_id: int):
        self.message_id = message_id
        self.src = src
        self.activation = activation
        self.context_id = context_id
        self.anchor: Optional[GradientEdge] = None
        self.node: Optional[Callable[[], Any]] = None  # its message's RecvRpcBackward, while the graph holds it


class SendFunction:
    """What torch shows as a message's SendRpcBackward node: the sent tensors' nodes are its next functions."""

    def __init__(self, edges: List[GradientEdge]):
        self.next_functions = tuple((edge.node, edge.output_nr) for edge in edges)

    def name(self) -> str:
        return nodes.SEND_NAME


class Context:
    """One distributed autograd context as this worker sees it."""

    def __init__(self, context_id: int):
        self.id = context_id
        self.creator = rank_of(context_id)
        self.lock = threading.Lock()
        self.sends: Dict[int, SendPoint] = {}
        self.recvs: Dict[int, RecvPoint] = {}
        self.store = GradStore()
        self.peers: Set[int] = set()  # ranks that know this context: it is released there when it ends
        self.called: Set[int] = set()  # ranks this worker sent a message in this context (torch's known workers)
        self.activations = Activations()
        self.reported = False  # a pass of this context was reported to the coordinator
        self.anomaly = 0  # anomaly detection flags (runtime.anomaly): 0 when off
        self.crossed: Set[int] = set()  # ranks that took part in this context's passes rooted here
        self.inspect = 0  # what to record for views (runtime.inspection): 0 when off
        self.runs: Dict[object, dict] = {}  # node -> what passes did to it (when inspect asks)
        self.pushed: Dict[int, int] = {}  # recv point -> bytes its gradient took to cross, last pass (inspect)
        self.passes = 0  # passes this worker took part in
        self.messages: Dict[str, Dict[int, List[int]]] = {"sent": {}, "received": {}}  # message -> its points
        self.brought_by: Optional[int] = None  # the rank whose message made it here (its share counts it)
        self.last_used = 0.0  # when a peer's message last named it (time.monotonic)

    def holds_nothing(self) -> bool:
        """No tensor was sent or received in it here, no gradient is kept, no call was made in it."""
        with self.lock:
            return not (self.sends or self.recvs or self.called or self.store.snapshot() or self.passes)

    def met(self, rank: int) -> None:
        """``rank`` heard of this context: it is released there too."""
        with self.lock:
            self.peers.add(rank)

    def sent_to(self, rank: int) -> None:
        """This worker sends ``rank`` a message in this context (a call or a fetch), with or without
        tensors that require grad: ``rank`` makes the context on arrival and is released with it."""
        with self.lock:
            self.peers.add(rank)
            self.called.add(rank)

    def gradients(self) -> Dict[torch.Tensor, torch.Tensor]:
        return self.store.snapshot()

    def _context_id(self) -> int:
        return self.id

    def _send_functions(self) -> Dict[int, "SendFunction"]:
        """As torch's: one SendRpcBackward per message sent, whose next functions are the sent tensors'."""
        with self.lock:
            return {message: SendFunction([self.sends[mid].edge for mid in mids if mid in self.sends])
                    for message, mids in self.messages["sent"].items()}

    def _recv_functions(self) -> Dict[int, object]:
        """As torch's: the RecvRpcBackward node of each message received (its first tensor's)."""
        with self.lock:
            points = [self.recvs.get(mids[0]) for mids in self.messages["received"].values()]
        nodes = {point.message_id: point.node() for point in points if point is not None and point.node is not None}
        return {mid: node for mid, node in nodes.items() if node is not None}

    def _known_worker_ids(self) -> Set[int]:
        """As torch's: the workers this one sent a message in this context, whether or not a tensor
        in it required grad (``peers`` also holds those that sent here, to release it there)."""
        with self.lock:
            return self.called | {p.dest for p in self.sends.values()}


class ContextStore:
    """The contexts this worker takes part in, which one each thread is working in, and every
    send point by message id (a pass may reach send points of another context: second order)."""

    def __init__(self, name: str, mint: IdMint, notify: Notify, deadlines: Deadlines, ttl: float,
                 is_member: Callable[[int], bool], per_peer: int = 65536):
        """``per_peer``: contexts one peer may bring here, open at once (the peer_contexts option)."""
        self.name = name
        self.brought = Shares("autograd contexts", per_peer)
        self._mint = mint
        self._notify = notify
        self._deadlines = deadlines
        self._ttl = ttl
        self._is_member = is_member
        self._contexts: Dict[int, Context] = {}
        self._sends: Dict[int, SendPoint] = {}
        self._released: "collections.OrderedDict[int, None]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        # Releases go out in batches, a moment later: one message per peer, not one per context.
        self._outgoing: Dict[int, List[int]] = {}
        self._flush_scheduled = False
        self._flush_wanted = threading.Event()
        self._flusher: Optional[threading.Thread] = None
        self.on_release: List[Callable[[int], None]] = []  # told the id of every context released here

    @property
    def rank(self) -> int:
        return self._mint.rank

    # ------------------------------------------------------------------ the thread's context

    def current(self) -> Optional[Context]:
        return getattr(self._local, "context", None)

    def swap(self, ctx: Optional[Context]) -> Optional[Context]:
        """Makes ``ctx`` the thread's context; returns the one it replaces (to swap back)."""
        previous = getattr(self._local, "context", None)
        self._local.context = ctx
        return previous

    def create(self) -> Context:
        current = self.current()
        if current is not None:
            raise RuntimeError(
                f"Already have an autograd context id for this thread: {current.id}; contexts cannot nest in one "
                "thread (leave the enclosing `with dist_autograd.context()` first)"
            )
        ctx = self._add(self._mint())
        self._local.context = ctx
        return ctx

    def detached(self) -> Context:
        """A new context that is no thread's yet (swap it in where calls must join it); ``exit`` ends it."""
        return self._add(self._mint())

    def exit(self, ctx: Context) -> None:
        """Ends the thread's context and releases it on every worker that took part."""
        if self.current() is ctx:
            self._local.context = None
        if ctx.reported:
            self._queue_release(COORDINATOR, ctx.id)  # the coordinator keeps a record of contexts with passes
        self.release(ctx.id)

    def _add(self, context_id: int) -> Context:
        ctx = Context(context_id)
        with self._lock:
            self._contexts[context_id] = ctx
        return ctx

    # ------------------------------------------------------------------ points

    def add_send_point(self, ctx: Context, tensor: torch.Tensor, dest: int, message: int = 0) -> tuple:
        """Registers a send point for ``tensor`` going to ``dest``; returns (message id, its activation).
        ``message``: the id of the first send point of the same outgoing message, 0 if this is it."""
        message_id = self._mint()
        edge = nodes.gradient_edge(tensor)
        point = SendPoint(edge, dest, order.place([edge.node]), ctx.id)
        activation = ctx.activations.of(edge.node, edge.output_nr)
        with ctx.lock:
            ctx.sends[message_id] = point
            ctx.messages["sent"].setdefault(message or message_id, []).append(message_id)
            ctx.peers.add(dest)
        with self._lock:
            self._sends[message_id] = point
        return message_id, activation

    def add_recv_points(self, ctx: Context, arrived: List[Tuple[torch.Tensor, int, Optional[Sequence[int]]]],
                        src: int) -> Tuple[torch.Tensor, ...]:
        """The tensors of one message from ``src`` that require grad, as outputs of one recv node:
        ``arrived`` holds (tensor, its message id, the ids the sender said its send point
        activates or None when it could not say)."""
        points = [RecvPoint(message_id, src, activations.of_recv(message_id, sent), ctx.id)
                  for _, message_id, sent in arrived]
        outs, anchor = nodes.make_recv([tensor for tensor, _, _ in arrived], points)
        node = nodes.weak_ref(outs[0].grad_fn)
        for point in points:
            point.anchor, point.node = anchor, node
        with ctx.lock:
            for point in points:
                ctx.recvs[point.message_id] = point
            ctx.messages["received"][points[0].message_id] = [point.message_id for point in points]
            ctx.peers.add(src)
        return outs

    def send_point(self, message_id: int) -> SendPoint:
        with self._lock:
            point = self._sends.get(message_id)
        if point is None:
            raise errors.FailedPrecondition(
                f"{self.name} has no send point {message_id}: its context was released, or it never existed"
            )
        return point

    # ------------------------------------------------------------------ lookup

    def get(self, context_id: int) -> Context:
        with self._lock:
            ctx = self._contexts.get(context_id)
        if ctx is None:
            raise RuntimeError(f"Could not find autograd context with id: {context_id} on {self.name}")
        return ctx

    def find(self, context_id: int) -> Optional[Context]:
        with self._lock:
            return self._contexts.get(context_id)

    def for_incoming(self, context_id: int, peer: int) -> Context:
        """The context a message from ``peer`` names, made on first use and counted against ``peer``'s
        share. Its creator must be a member (or the sender itself, which may call before this process
        heard it joined): a context under a rank nobody holds would never be released by anyone."""
        with self._lock:
            ctx = self._contexts.get(context_id)
            made = ctx is None
            if made:
                if context_id in self._released:
                    raise errors.FailedPrecondition(
                        f"distributed autograd context {context_id} was already released on {self.name}"
                    )
                creator = rank_of(context_id)
                if creator != peer and not self._is_member(creator):
                    raise errors.FailedPrecondition(
                        f"distributed autograd context {context_id} names rank {creator} as its creator, "
                        f"which is no member of the world: {self.name} makes no context for it")
                refused = self.brought.take(rank_key(peer))
                if refused is not None:
                    raise errors.ResourceExhausted(f"{self.name}: {refused}")
                ctx = self._contexts[context_id] = Context(context_id)
                ctx.brought_by = peer
            ctx.last_used = time.monotonic()
        if peer >= 0:
            ctx.met(peer)
        if made:
            self._deadlines.schedule(self._ttl, lambda: self._check_brought(context_id))
        return ctx

    def _check_brought(self, context_id: int) -> None:
        """A context a peer brought, a TTL after it came or was last named: one whose creator is (still)
        no member is released; one that never held anything here (no tensor sent or received, no
        gradient, no call made in it) is dropped here once idle for the TTL, so made-up ids cannot
        pile up. Dropped, not released: its creator may still use it, and makes it here again."""
        ctx = self.find(context_id)
        if ctx is None:
            return
        if not self._is_member(ctx.creator):
            self.release(context_id)
            return
        if not ctx.holds_nothing():
            return  # it is its creator's to release now
        with self._lock:
            idle_for = time.monotonic() - ctx.last_used
            dropped = idle_for >= self._ttl and self._contexts.get(context_id) is ctx
            if dropped:
                del self._contexts[context_id]
        if dropped:
            self.brought.give_back(rank_key(ctx.brought_by))
        elif idle_for < self._ttl:
            self._deadlines.schedule(self._ttl - idle_for, lambda: self._check_brought(context_id))

    # ------------------------------------------------------------------ release

    def release(self, context_id: int, sender: Optional[int] = None) -> bool:
        """Drops the context here and tells every peer it talked to (except ``sender``) to do the same."""
        with self._lock:
            ctx = self._contexts.pop(context_id, None)
            self._released[context_id] = None
            while len(self._released) > _RELEASED_MEMORY:
                self._released.popitem(last=False)
            if ctx is not None:
                for message_id in ctx.sends:
                    self._sends.pop(message_id, None)
        if ctx is None:
            return False
        if ctx.brought_by is not None:
            self.brought.give_back(rank_key(ctx.brought_by))
        ctx.activations.clear()
        for callback in self.on_release:
            callback(context_id)
        for peer in ctx.peers - {self.rank, sender}:
            self._queue_release(peer, context_id)
        return True

    def _queue_release(self, peer: int, context_id: int) -> None:
        with self._lock:
            self._outgoing.setdefault(peer, []).append(context_id)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self._deadlines.schedule(RELEASE_DELAY, self._flush_elsewhere)

    def _flush_elsewhere(self) -> None:
        """Off the deadlines thread, on one thread of its own: reaching a peer may mean connecting,
        which may take a while, and batches asked for meanwhile wait for it rather than pile up."""
        with self._lock:
            self._flush_wanted.set()
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._flush_loop, name="distautograd-release", daemon=True)
        self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            if not self._flush_wanted.wait(FLUSHER_IDLE):
                with self._lock:
                    if not self._flush_wanted.is_set():
                        self._flusher = None  # idle: the next batch starts another
                        return
            self._flush_wanted.clear()
            self.flush_releases()

    def flush_releases(self) -> None:
        with self._lock:
            outgoing, self._outgoing = self._outgoing, {}
            self._flush_scheduled = False
        for peer, context_ids in outgoing.items():
            if peer == COORDINATOR:
                request = pb.Request(context_event=pb.ContextEvent(closed=context_ids))
            else:
                request = pb.Request(release_context=pb.ReleaseContext(context_ids=context_ids))
            try:
                self._notify(peer, request)
            except Exception as exc:
                if peer == COORDINATOR or self._is_member(peer):  # unreachable for now: again when it is back
                    log.debug("releasing contexts on rank %d again in %g s: %s", peer, RELEASE_RETRY, exc)
                    self._retry_release(peer, context_ids)
                else:  # a departed peer has nothing left to release
                    log.debug("could not release contexts on rank %d: %s", peer, exc)

    def _retry_release(self, peer: int, context_ids: List[int]) -> None:
        with self._lock:
            waiting = self._outgoing.setdefault(peer, [])
            waiting.extend(context_ids)
            del waiting[:-MAX_WAITING_RELEASES]  # a peer away for long: the oldest go (its TTL covers them)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self._deadlines.schedule(RELEASE_RETRY, self._flush_elsewhere)

    def handle_release(self, link, body: pb.ReleaseContext, attachments) -> None:
        for context_id in body.context_ids:
            self.release(context_id, sender=link.peer_rank)

    def on_departed(self, rank: int) -> None:
        """Contexts created by a worker that is gone are released after the time-to-live."""
        with self._lock:
            orphans = [cid for cid in self._contexts if rank_of(cid) == rank]
        if orphans:
            log.info("releasing %d context(s) of departed rank %d in %g s", len(orphans), rank, self._ttl)
            self._deadlines.schedule(self._ttl, lambda: [self.release(cid) for cid in orphans])

    def count(self) -> int:
        with self._lock:
            return len(self._contexts)

    def ids(self) -> List[int]:
        with self._lock:
            return list(self._contexts)
