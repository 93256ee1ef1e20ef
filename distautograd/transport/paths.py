"""How to reach a peer, decided in one place: a Unix socket on the same host, then plain TCP, then the gRPC stream.

Workers reach each other and the coordinator the same way. The socket paths speak the same
Frames as the gRPC stream, cost a fraction of it per message, and carry big tensors in shared
memory on one host; the gRPC stream is the protocol's reference path and works wherever gRPC
does (through TLS, proxies, other languages).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Dict, Optional, Set

import grpc

from distautograd import errors
from distautograd.protocol import COORDINATOR_SERVICE
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.protocol.v1 import messages_pb2_grpc
from distautograd.transport import ending, grpc_server, grpc_stream, sockets
from distautograd.transport.link import Link
from distautograd.transport.security import TOKEN_ENV, Security
from distautograd.transport.shm import SegmentPool

log = logging.getLogger("distautograd")

PREFERENCES = ("auto", "tcp", "grpc")


@dataclass(frozen=True)
class Endpoint:
    """Where a peer listens: its gRPC address and service, and the faster paths it offers."""

    name: str
    grpc_address: str
    service: str
    unix_path: str = ""
    host_id: str = ""
    socket_address: str = ""


class Channels:
    """gRPC channels by address, shared by every link to the same place."""

    def __init__(self, security: Security):
        self._security = security
        self._channels: Dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> grpc.Channel:
        with self._lock:
            chan = self._channels.get(address)
            if chan is None:
                chan = self._channels[address] = grpc_server.channel(address, self._security)
            return chan

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for chan in channels:
            chan.close()


def coordinator_endpoint(chan: grpc.Channel, address: str, timeout: float, metadata: tuple = ()) -> Endpoint:
    """Where the coordinator at ``address`` listens, with the socket paths it offers (its Unix socket is
    also where the world's token is handed out, when none was configured); Unavailable if it does not
    answer. ``metadata`` carries the token: beyond loopback the coordinator answers only with it."""
    try:
        offered = messages_pb2_grpc.CoordinatorStub(chan).GetEndpoints(pb.Empty(), timeout=timeout, metadata=metadata)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise errors.Unauthenticated(f"the coordinator at {address} refused: {exc.details()}") from None
        raise errors.Unavailable(f"the coordinator at {address} does not answer: {exc.code().name}") from None
    host = address.rpartition(":")[0].strip("[]")
    socket_address = f"[{host}]:{offered.socket_port}" if ":" in host else f"{host}:{offered.socket_port}"
    return Endpoint("coordinator", address, COORDINATOR_SERVICE, offered.unix_path, offered.host_id,
                    socket_address if offered.socket_port else "")


def fetch_world_token(security: Security, endpoint: Endpoint, name: str) -> None:
    """Without a configured token, asks the coordinator for the world's over its Unix socket, which
    only processes of the same OS user may use (transport.security)."""
    if security.token:
        return
    if not endpoint.unix_path or endpoint.host_id != sockets.host_id():
        raise ValueError(
            f"the coordinator at {endpoint.grpc_address} is on another machine: every process of a world "
            f"that spans machines needs the same {TOKEN_ENV} (or --token, or BackendOptions(token=...))")
    sock, welcome = sockets.connect(endpoint.unix_path, True, pb.Hello(name=name, target=endpoint.name, token_only=True))
    sock.close()
    security.adopt_world_token(welcome.world_token)


class Connector:
    """Opens links to endpoints over the fastest path that works, as this process's settings allow."""

    def __init__(self, security: Security, preference: str, pool: Optional[SegmentPool], channels: Channels,
                 silence: Optional[float] = None):
        if preference not in PREFERENCES:
            raise ValueError(f"transport must be one of {PREFERENCES}, got {preference!r}")
        self.security = security
        self.preference = preference
        self.pool = pool
        self.channels = channels
        self.silence = silence  # how long a TCP peer may stop answering before its connection fails
        self._worked: Set[str] = set()  # socket addresses connected to before: silence there is not a firewall
        self.host_id = sockets.host_id()

    def attach(self, link: Link, endpoint: Endpoint, hello: pb.Hello, metadata) -> str:
        """Connects ``link`` to ``endpoint``; returns the kind of transport it got. ``metadata`` (a
        callable: the token may only be known once a socket has been opened) goes with gRPC streams."""
        sock = self._socket(endpoint, hello)
        if sock is not None:
            transport = sockets.SocketTransport(link, sock, self.pool)
            transport.start()
            return transport.kind
        grpc_stream.open_stream(self.channels.get(endpoint.grpc_address), f"/{endpoint.service}/Connect", link,
                                metadata())
        return "grpc"

    def _socket(self, endpoint: Endpoint, hello: pb.Hello):
        paths = []
        if self.preference == "auto" and endpoint.unix_path and endpoint.host_id == self.host_id:
            paths.append((endpoint.unix_path, True))
        if self.preference in ("auto", "tcp") and endpoint.socket_address and not self.security.tls:
            paths.append((endpoint.socket_address, False))
        for address, unix in paths:
            try:
                sock, welcome = sockets.connect(address, unix, hello, silence=self.silence)
                self.security.adopt_world_token(welcome.world_token)
                self._worked.add(address)
                return sock
            except (OSError, EOFError) as exc:  # not reachable this way (another host, a firewall, busy): next
                if address in self._worked and isinstance(exc, OSError) and (
                        isinstance(exc, TimeoutError) or exc.errno in ending.SILENT):
                    # This path worked before: a firewall did not start dropping it, the host went silent.
                    raise errors.Unreachable(f"worker '{endpoint.name}' is unreachable: no answer at {address} "
                                             f"({exc})", worker=endpoint.name) from None
                log.debug("no %s path to %s at %s: %s", "unix" if unix else "tcp", endpoint.name, address, exc)
        return None
