"""gRPC servers and channels configured the one way this project uses them: limits, keepalive, health, the token."""

from __future__ import annotations

import contextlib
import logging
from concurrent import futures
from typing import Callable, Dict, Iterator, Optional

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport.link import MAX_MESSAGE_BYTES
from distautograd.transport.security import Security, TokenCheck
from distautograd.transport.shares import Shares

log = logging.getLogger("distautograd")

MAX_STREAMS = 128  # gRPC streams peers may hold open at once on one server (each holds a server thread)
PEER_STREAMS = 32  # of those, what one caller may hold (a member opens one per peer and direction)

PEER_NAME_KEY = "x-distautograd-name"
PEER_RANK_KEY = "x-distautograd-rank"

_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A silent peer is found within ~5 s (sockets: within the heartbeat timeout, framing.tune).
    ("grpc.keepalive_time_ms", 2_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # A channel whose peer was unreachable tries again within 2 s of the network coming back, not
    # after gRPC's default backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.http2.max_pings_without_data", 0),
]
_SERVER_OPTIONS = _OPTIONS + [
    ("grpc.so_reuseport", 0),  # a port in use is an error, never a silent second listener
    # Only uncompressed messages: gRPC would inflate a compressed one (59 KiB -> 60 MiB) before any
    # interceptor could check its token.
    ("grpc.compression_enabled_algorithms_bitset", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
]


class Slots:
    """At most ``limit`` at once of something that holds one of a server's threads while it lasts (a
    stream, a waiting call), and at most ``per_peer`` of them for one caller: one more is answered
    RESOURCE_EXHAUSTED at once, so the health check always finds a thread and no caller takes
    every slot from the others."""

    def __init__(self, resource: str, limit: int, per_peer: int, refusal: Callable[[int], str]):
        self.limit = limit
        self._refusal = refusal  # the message when all are taken, given the limit
        self.shares = Shares(resource, min(per_peer, limit), limit)

    @contextlib.contextmanager
    def held(self, context: grpc.ServicerContext, peer: Optional[str] = None) -> Iterator[None]:
        peer = peer or caller(context)
        refused = self.shares.take(peer)
        if refused is not None:
            full = self.shares.held(peer) < self.shares.per_peer
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal(self.limit) if full else refused)
        try:
            yield
        finally:
            self.shares.give_back(peer)


class Server:
    """A gRPC server with the health service, the token check and explicit message limits."""

    def __init__(self, host: str, port: int, security: Security, max_workers: int = 512):
        security.check_bind(host)
        self.security = security
        interceptors = [TokenCheck(security)]
        self._executor = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="distautograd-grpc")
        self._server = grpc.server(self._executor, options=_SERVER_OPTIONS, interceptors=interceptors)
        self.health = health.HealthServicer()
        self._services: list = []
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        credentials = security.server_credentials()
        try:
            if credentials is not None:
                self.port = self._server.add_secure_port(target, credentials)
            else:
                self.port = self._server.add_insecure_port(target)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {target}: {exc}") from exc
        if not self.port:
            raise OSError(f"cannot listen on {target}: the address is in use or not available here")
        self.host = host

    def add_service(self, service: str, methods: Dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
        self._services.append(service)
        self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def start(self) -> None:
        self._server.start()
        self.set_serving(True)

    def set_serving(self, serving: bool) -> None:
        """What the health check says, for the process and each of its services."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", *self._services):
            self.health.set(service, status)

    def stop(self, grace: Optional[float] = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait(timeout=(grace or 0) + 5)
        self._executor.shutdown(wait=False, cancel_futures=True)


def channel(address: str, security: Security) -> grpc.Channel:
    options = _OPTIONS + security.channel_options()
    credentials = security.channel_credentials()
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


def caller(context: grpc.ServicerContext) -> str:
    """Who a call is from, for its share: the name and rank it gives, or its address if it gives none."""
    name, rank = peer_identity(context)
    return f"worker '{name}' (rank {rank})" if name else f"an unnamed caller at {context.peer()}"


def peer_identity(context: grpc.ServicerContext) -> tuple:
    meta = dict(context.invocation_metadata() or ())
    name = meta.get(PEER_NAME_KEY, "")
    try:
        rank = int(meta.get(PEER_RANK_KEY, "-1"))
    except ValueError:
        rank = -1
    return name, rank


def parse_frame(raw: bytes, context: grpc.ServicerContext) -> pb.Frame:
    try:
        return pb.Frame.FromString(raw)
    except DecodeError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed Frame: {exc}")


def raw_stream_handler(behavior) -> grpc.RpcMethodHandler:
    return grpc.stream_stream_rpc_method_handler(behavior)


def raw_unary_handler(behavior) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(behavior)
