"""This process's links: to each peer (opened on first use, reopened after a failure), from peers, and to the coordinator.

This is the port services use to reach others: ``request`` and ``notify`` a rank, or the
coordinator. How a link is opened is transport.paths' business.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Dict, List, Optional, Set, Tuple

from distautograd import errors
from distautograd.protocol import WORKER_SERVICE
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import grpc_server, grpc_stream, sockets
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.link import Completion, Link, Serialized
from distautograd.transport.paths import Connector, Endpoint
from distautograd.runtime.world import WorldView

log = logging.getLogger("distautograd")

COORDINATOR = -1  # the rank services use to mean the coordinator
JOIN_WAIT = 30.0  # seconds a peer's early message waits for this process's join reply
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 4.0  # seconds calls to a peer whose link timed out fail before reconnecting
STEADY_LINK = 10.0  # a link that lasted this long resets the backoff


class Peers:
    def __init__(
        self,
        name: str,
        world: WorldView,
        connector: Connector,
        deadlines: Deadlines,
        resolve_type: Callable,
        stopping: threading.Event,
        max_message_bytes: int,
    ):
        self.name = name
        self.rank = -1
        self.world = world
        self.connector = connector
        self.deliver: Callable = _not_ready  # the dispatcher, set by the composition root
        self.push_lane = None  # the backward's PushLane for peers' links, set by the composition root
        self._deadlines = deadlines
        self._resolve_type = resolve_type
        self._stopping = stopping
        self._max_message_bytes = max_message_bytes
        self._streams = grpc_server.Slots("streams", grpc_server.MAX_STREAMS, grpc_server.PEER_STREAMS,
                                          lambda limit: f"{name} has {limit} streams open already")
        self._links: Dict[int, Link] = {}
        self._connecting: Dict[int, threading.Lock] = {}  # one connection attempt per peer at a time
        self._incoming: Set[Link] = set()
        self._lock = threading.Lock()
        self.coordinator: Optional[Link] = None
        self._joined = threading.Event()
        self.lost: List[Callable[[int, BaseException], None]] = []  # (rank, error) when a link to a peer breaks
        self._quiet: Dict[int, Tuple[float, float, BaseException]] = {}  # rank -> (retry at, backoff, why)

    # ------------------------------------------------------------------ links

    def joined(self, rank: int) -> None:
        """This process has its rank: what peers sent meanwhile is delivered now."""
        self.rank = rank
        self._joined.set()

    def new_link(self, peer: str, rank: int) -> Link:
        deliver = self._from_coordinator if rank == COORDINATOR else self._from_peer
        link = Link(peer, deliver, self._deadlines, self._max_message_bytes, resolve_type=self._resolve_type)
        link.peer_rank = rank
        if rank != COORDINATOR:
            link.on_push = self._push_from_peer
            link.push_lane = self.push_lane
        return link

    def hello(self, target: str, rank: Optional[int] = None) -> pb.Hello:
        return pb.Hello(name=self.name, rank=self.rank if rank is None else rank,
                        token=self.connector.security.token or "", target=target)

    def metadata(self, rank: Optional[int] = None) -> tuple:
        return self.connector.security.metadata() + (
            (grpc_server.PEER_NAME_KEY, self.name),
            (grpc_server.PEER_RANK_KEY, str(self.rank if rank is None else rank)),
        )

    def to(self, rank: int) -> Link:
        """The open link to ``rank`` (or the coordinator), connecting now if there is none. Connecting
        to one peer (which may take up to the silence limit when it is unreachable) holds up nobody else."""
        if rank == COORDINATOR:
            link = self.coordinator
            if link is None:
                raise RuntimeError("RPC has not been initialized. Call distautograd.rpc.init_rpc first.")
            return link
        with self._lock:
            link = self._links.get(rank)
            if link is not None and not link.closed:
                return link
            connecting = self._connecting.setdefault(rank, threading.Lock())
        with connecting:
            with self._lock:
                link = self._links.get(rank)
                if link is not None and not link.closed:
                    return link
                entry = self._reachable_entry(rank)
            link = self.new_link(f"worker '{entry.name}' (rank {rank})", rank)
            endpoint = Endpoint(entry.name, entry.address, WORKER_SERVICE, entry.unix_path, entry.host_id,
                                entry.socket_address)
            try:
                self.connector.attach(link, endpoint, self.hello(entry.name), self.metadata)
            except errors.Unreachable as exc:  # nothing went over this link: only calls back off for a while
                self._back_off(rank, exc, steady=False)
                raise
            self._watch(link, rank)
            with self._lock:
                self._links[rank] = link
            return link

    def _reachable_entry(self, rank: int) -> pb.WorkerEntry:
        """``rank``'s entry, if a connection to it may be tried now; else why not, raised."""
        if self._stopping.is_set():
            raise errors.Unavailable(f"{self.name} is shut down")
        entry = self.world.entry(rank)
        if entry is None:
            gone = self.world.departure(rank)
            if gone is not None:
                how = "died" if gone.failed else "left"
                raise errors.Unavailable(f"worker '{gone.name}' (rank {rank}) {how}: {gone.reason}", worker=gone.name)
            raise ValueError(f"unknown worker rank {rank}; known workers: {self.world.describe()}")
        quiet = self._quiet.get(rank)
        backing_off = quiet is not None and time.monotonic() < quiet[0]
        if backing_off and not self._heard_since_locked(rank, quiet[0] - quiet[1]):
            raise errors.Unreachable(
                f"worker '{entry.name}' (rank {rank}) is unreachable ({quiet[2]}); connecting again in "
                f"{quiet[0] - time.monotonic():.1f} s", worker=entry.name)
        return entry

    # ------------------------------------------------------------------ the port

    def request(self, rank: int, request: pb.Request, attachments=(), timeout: Optional[float] = None,
                complete: Optional[Completion] = None) -> Optional[Future]:
        """Sends a request. With ``complete``, it is called once with (response, attachments, error);
        without, a Future of (response, attachments) is returned. Never raises."""
        if complete is None:
            future: Future = Future()

            def complete(response, attachments, error, future=future):
                future.set_exception(error) if error is not None else future.set_result((response, attachments))

            self.request(rank, request, attachments, timeout, complete)
            return future
        try:
            link = self.to(rank)
        except BaseException as exc:
            complete(None, None, exc)
            return None
        link.send_request(request, attachments, timeout, complete)
        return None

    def notify(self, rank: int, request: pb.Request | Serialized, attachments=()) -> None:
        """Sends a request that gets no response; raises if it cannot be sent."""
        self.to(rank).notify(request, attachments)

    # ------------------------------------------------------------------ incoming

    def _from_coordinator(self, *frame) -> None:
        self.deliver(*frame)

    def await_join(self) -> None:
        """A peer hears of this process from the coordinator before this process has read its own join
        reply: what it sends waits (on its connection's thread) until this process knows its rank."""
        if not self._joined.is_set():
            self._joined.wait(JOIN_WAIT)

    def _from_peer(self, *frame) -> None:
        self.await_join()
        self.deliver(*frame)

    def _push_from_peer(self, link, push) -> None:
        """_from_peer, for a push the core read (transport.pushes): the dispatcher takes it as it is."""
        self.await_join()
        take = getattr(self.deliver, "take_push", None)
        if take is None:  # not a Dispatcher (a test's handler): the request, as protobuf parses it
            self.deliver(link, 0, push.frame().request, push.attachments)
            return
        take(link, push)

    @property
    def stream_shares(self):
        """The gRPC streams each peer holds open to this process."""
        return self._streams.shares

    def accept_socket(self, sock, hello: pb.Hello) -> None:
        link = self.new_link(f"worker '{hello.name}' (rank {hello.rank})", hello.rank)
        transport = sockets.SocketTransport(link, sock, self.connector.pool)
        self._track_incoming(link)
        transport.start()

    def serve_connect(self, raw_frames, context):
        """The gRPC stream a peer opened to this process. Each holds one of the server's threads for
        as long as it lasts, so at most MAX_STREAMS at once: the health check must always find one."""
        with self._streams.held(context):
            name, rank = grpc_server.peer_identity(context)
            link = self.new_link(f"worker '{name}' (rank {rank})", rank)
            self._incoming.add(link)
            self._watch(link, rank)
            yield from grpc_stream.serve_stream(raw_frames, context, link, lambda: self._incoming.discard(link))

    def _track_incoming(self, link: Link) -> None:
        self._incoming.add(link)
        link.on_close.append(lambda error: self._incoming.discard(link))
        self._watch(link, link.peer_rank)

    def _watch(self, link: Link, rank: int) -> None:
        """When ``link`` breaks, those who care hear it; one that timed out makes calls to the peer fail
        at once for a while (backing off, up to MAX_BACKOFF) instead of each waiting to connect."""
        opened = time.monotonic()

        def broke(error: BaseException) -> None:
            if self._stopping.is_set() or rank < 0:
                return
            if isinstance(error, errors.Unreachable):
                self._back_off(rank, error, steady=time.monotonic() - opened > STEADY_LINK)
            for callback in self.lost:
                callback(rank, error)

        link.on_close.append(broke)
        if link.closed:  # it broke before anyone was watching
            broke(link.closed_with or errors.Unavailable(f"connection to {link.peer} lost"))

    def _back_off(self, rank: int, error: BaseException, steady: bool) -> None:
        """Calls to ``rank`` fail at once for a while: twice as long as last time (at most MAX_BACKOFF),
        or FIRST_BACKOFF after a link that had lasted."""
        with self._lock:
            before = self._quiet.get(rank)
            backoff = FIRST_BACKOFF if before is None or steady else min(MAX_BACKOFF, before[1] * 2)
            self._quiet[rank] = (time.monotonic() + backoff, backoff, error)

    def _heard_since_locked(self, rank: int, since: float) -> bool:
        """Whether a connection ``rank`` opened to us brought anything after ``since``: it is back."""
        return any(link.peer_rank == rank and link.last_heard > since for link in list(self._incoming))

    def silence(self, rank: int) -> float:
        """Seconds since a frame last came from ``rank`` on any open link (infinite with none)."""
        with self._lock:
            links = [self._links.get(rank)] + [link for link in list(self._incoming) if link.peer_rank == rank]
        heard = [link.last_heard for link in links if link is not None and not link.closed]
        return time.monotonic() - max(heard) if heard else float("inf")

    # ------------------------------------------------------------------ closing

    def close_peer(self, rank: int, error: errors.Unavailable) -> None:
        """Fails everything in flight with a peer that left, died or is unreachable, both directions
        (a departed peer's backoff goes with it: a process that takes its rank starts afresh)."""
        with self._lock:
            link = self._links.pop(rank, None)
            if not isinstance(error, errors.Unreachable):
                self._quiet.pop(rank, None)
        if link is not None:
            link.close(error)
        for incoming in list(self._incoming):
            if incoming.peer_rank == rank:
                incoming.close(error)

    def pending_requests(self) -> int:
        with self._lock:
            return sum(link.pending_count() for link in self._links.values())

    def close(self) -> None:
        self._joined.set()  # nothing waits for a join that will not come
        gone = errors.Unavailable(f"{self.name} is shut down")
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links + list(self._incoming):
            link.close(gone)
        self.connector.channels.close()


def _not_ready(link, frame_id, request, attachments) -> None:
    raise errors.Unavailable("this process is still starting")
