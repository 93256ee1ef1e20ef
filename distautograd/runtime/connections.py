"""This process's links to its peers: opened on first use over the fastest path that reaches the peer, closed when it goes."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Dict, Optional, Set

import grpc

from distautograd import errors
from distautograd.transport import grpc_io, shm, sockets
from distautograd.transport.link import Link
from distautograd.protocol.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from distautograd.runtime.agent import Agent

log = logging.getLogger("distautograd")

WORKER_SERVICE = "distautograd.v1.Worker"


class Connections:
    """Outgoing links by peer rank (one each, reopened after a failure) and the incoming ones peers opened."""

    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.host_id = sockets.host_id()
        options = agent.options
        self.pool = shm.SegmentPool() if options.shared_memory and shm.available() is None else None
        self._links: Dict[int, Link] = {}
        self._incoming: Set[Any] = set()
        self._channels: Dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def new_link(self, peer: str, rank: int) -> Link:
        agent = self.agent
        link = Link(peer, agent.dispatcher, agent.deadlines, resolve_type=agent.allowlist.resolve)
        link.peer_rank = rank
        return link

    def metadata(self, rank: Optional[int] = None) -> tuple:
        agent = self.agent
        return agent.security.metadata() + (
            (grpc_io.PEER_NAME_KEY, agent.name),
            (grpc_io.PEER_RANK_KEY, str(agent.rank if rank is None else rank)),
        )

    def to(self, rank: int) -> Link:
        """The open link to ``rank``, connecting now if there is none."""
        with self._lock:
            link = self._links.get(rank)
            if link is not None and not link.closed:
                return link
            if self.agent.stopping.is_set():
                raise errors.Unavailable(f"{self.agent.name} is shut down")
            world = self.agent.world
            entry = world.entry(rank)
            if entry is None:
                gone = world.departure(rank)
                if gone is not None:
                    how = "died" if gone.failed else "left"
                    raise errors.Unavailable(f"worker '{gone.name}' (rank {rank}) {how}: {gone.reason}")
                raise ValueError(f"unknown worker rank {rank}; known workers: {world.describe()}")
            link = self.new_link(f"worker '{entry.name}' (rank {rank})", rank)
            sock = self.connect_socket(entry)
            if sock is not None:
                sockets.SocketTransport(link, sock, self.pool).start()
            else:
                chan = self._channels.get(entry.address)
                if chan is None:
                    chan = self._channels[entry.address] = grpc_io.channel(entry.address, self.agent.security)
                grpc_io.open_stream(chan, f"/{WORKER_SERVICE}/Connect", link, self.metadata())
            self._links[rank] = link
            return link

    def connect_socket(self, entry: pb.WorkerEntry, rank: Optional[int] = None):
        """A socket to ``entry`` when a faster path than gRPC reaches it; None to use gRPC."""
        agent = self.agent
        transport = agent.options.transport
        hello = pb.Hello(name=agent.name, rank=agent.rank if rank is None else rank,
                         token=agent.security.token or "", target=entry.name)
        paths = []
        if transport == "auto" and entry.unix_path and entry.host_id == self.host_id:
            paths.append((entry.unix_path, True))
        if transport in ("auto", "tcp") and entry.socket_address and not agent.security.tls:
            paths.append((entry.socket_address, False))
        for address, unix in paths:
            try:
                return sockets.connect(address, unix, hello)
            except OSError as exc:  # not reachable this way (another host, a firewall): try the next
                log.debug("no %s path to %s at %s: %s", "unix" if unix else "tcp", entry.name, address, exc)
        return None

    def accept_socket(self, sock, hello: pb.Hello) -> None:
        link = self.new_link(f"worker '{hello.name}' (rank {hello.rank})", hello.rank)
        transport = sockets.SocketTransport(link, sock, self.pool)
        self._track_incoming(link)
        transport.start()

    def serve_connect(self, raw_frames, context):
        """The gRPC stream a peer opened to this process."""
        name, rank = grpc_io.peer_identity(context)
        link = self.new_link(f"worker '{name}' (rank {rank})", rank)
        self._incoming.add(link)
        yield from grpc_io.serve_stream(raw_frames, context, link, lambda: self._incoming.discard(link))

    def _track_incoming(self, link: Link) -> None:
        self._incoming.add(link)
        link.on_close.append(lambda error: self._incoming.discard(link))

    def close_peer(self, rank: int, error: errors.Unavailable) -> None:
        """Fails everything in flight with a peer that left or died, both directions."""
        with self._lock:
            link = self._links.pop(rank, None)
        if link is not None:
            link.close(error)
        for incoming in list(self._incoming):
            if incoming.peer_rank == rank:
                incoming.close(error)

    def pending_requests(self) -> int:
        with self._lock:
            return sum(link.pending_count() for link in self._links.values())

    def close(self) -> None:
        gone = errors.Unavailable(f"{self.agent.name} is shut down")
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links + list(self._incoming):
            link.close(gone)
        for chan in self._channels.values():
            chan.close()
