"""gRPC servers and channels configured the one way this project uses them, and Links carried over their streams."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent import futures
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from distautograd import errors
from distautograd.transport.link import MAX_MESSAGE_BYTES, Link
from distautograd.transport.security import Security, TokenCheck
from distautograd.protocol.v1 import messages_pb2 as pb

log = logging.getLogger("distautograd")

PEER_NAME_KEY = "x-distautograd-name"
PEER_RANK_KEY = "x-distautograd-rank"
CHUNK_BYTES = 4 << 20
INLINE_LIMIT = 4 << 20
_STOP = object()

_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
_SERVER_OPTIONS = _OPTIONS + [
    ("grpc.so_reuseport", 0),  # a port in use is an error, never a silent second listener
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]


class GrpcStreamTransport:
    """Frames over a gRPC stream. Attachments ride inline when small; otherwise they follow their
    frame as Chunk frames, so no single gRPC message exceeds the configured limit."""

    kind = "grpc"

    def __init__(self, link: Link):
        self.link = link
        self._outbox: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._incoming: Optional[_Incoming] = None
        link.transport = self

    def send(self, frame_id: int, kind: str, message, attachments: Sequence[Any]) -> None:
        views = [a if isinstance(a, bytes) else memoryview(a).cast("B") for a in attachments]
        total = sum(len(v) for v in views)
        if total <= INLINE_LIMIT:
            if views:
                message.attachments.inline.extend(bytes(v) for v in views)
            self._outbox.put(pb.Frame(id=frame_id, **{kind: message}))
        else:
            message.attachments.streamed_sizes.extend(len(v) for v in views)
            self._outbox.put(_chunked(pb.Frame(id=frame_id, **{kind: message}), views))

    def close(self) -> None:
        self._outbox.put(_STOP)

    def frames(self) -> Iterator[pb.Frame]:
        """The outgoing frames, for gRPC to send; ends when the link closes."""
        while True:
            item = self._outbox.get()
            if item is _STOP:
                return
            if isinstance(item, pb.Frame):
                yield item
            else:
                yield from item

    def receive(self, frame: pb.Frame) -> None:
        """Takes one incoming frame (called by the thread that reads the stream)."""
        link = self.link
        incoming = self._incoming
        if incoming is not None:
            if frame.WhichOneof("kind") != "chunk":
                link.fail_protocol("a frame arrived before the chunks of the previous one were complete")
                return
            try:
                done = incoming.add(frame.chunk.data)
            except errors.InvalidArgument as exc:
                link.fail_protocol(str(exc))
                return
            if done:
                self._incoming = None
                if not incoming.discard:
                    link.deliver(incoming.frame, incoming.buffers)
            return
        kind = frame.WhichOneof("kind")
        if kind == "chunk":
            link.fail_protocol("a chunk arrived without a frame to belong to")
            return
        message = getattr(frame, kind) if kind else None
        if message is None:
            link.fail_protocol("a frame arrived with neither a request nor a response")
            return
        sizes = list(message.attachments.streamed_sizes)
        if sizes:
            discard = sum(sizes) > link.max_attachment_bytes
            if discard:
                link.refuse_oversized(frame, sum(sizes))
            incoming = _Incoming(frame, sizes, discard)
            if incoming.complete:
                if not discard:
                    link.deliver(frame, incoming.buffers)
            else:
                self._incoming = incoming
            return
        link.deliver(frame, list(message.attachments.inline))


def _chunked(header: pb.Frame, views: List[Any]) -> Iterator[pb.Frame]:
    yield header
    for view in views:
        for offset in range(0, len(view), CHUNK_BYTES):
            yield pb.Frame(id=header.id, chunk=pb.Chunk(data=bytes(view[offset : offset + CHUNK_BYTES])))


class _Incoming:
    """A frame whose streamed attachments are still arriving."""

    def __init__(self, frame: pb.Frame, sizes: List[int], discard: bool = False):
        self.frame = frame
        self.discard = discard
        self.sizes = sizes
        self.buffers: List[Any] = [] if discard else [bytearray(size) for size in sizes]
        self._index = 0
        self._offset = 0
        self._skip_empty()

    @property
    def complete(self) -> bool:
        return self._index >= len(self.sizes)

    def _skip_empty(self) -> None:
        while self._index < len(self.sizes) and self._offset >= self.sizes[self._index]:
            self._index += 1
            self._offset = 0

    def add(self, data: bytes) -> bool:
        """Stores one chunk; True when the last one has arrived."""
        size = self.sizes[self._index]
        end = self._offset + len(data)
        if end > size:
            raise errors.InvalidArgument("a chunk ran past the end of its attachment")
        if not self.discard:
            self.buffers[self._index][self._offset : end] = data
        self._offset = end
        self._skip_empty()
        return self.complete


class Server:
    """A gRPC server with the health service, the token check and explicit message limits."""

    def __init__(self, host: str, port: int, security: Security, max_workers: int = 256):
        security.check_bind(host)
        self.security = security
        interceptors = [TokenCheck(security.token)] if security.token else []
        self._executor = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="distautograd-grpc")
        self._server = grpc.server(self._executor, options=_SERVER_OPTIONS, interceptors=interceptors)
        self.health = health.HealthServicer()
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
        self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def start(self) -> None:
        self._server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)

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


def _status_error(exc: grpc.RpcError, peer: str) -> errors.RpcError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = errors.for_status(code)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
        return errors.Unavailable(f"connection to {peer} lost: {details}")
    return cls(f"{peer} refused the connection: {details}")


def open_stream(chan: grpc.Channel, method: str, link: Link, metadata: Iterable) -> grpc.Future:
    """Runs ``link`` over a new client stream; a thread feeds it what arrives until the stream ends."""
    stream = GrpcStreamTransport(link)
    call = chan.stream_stream(
        method, request_serializer=pb.Frame.SerializeToString, response_deserializer=pb.Frame.FromString
    )(stream.frames(), metadata=tuple(metadata))

    def pump() -> None:
        try:
            for frame in call:
                stream.receive(frame)
                del frame  # not kept alive while waiting for the next one
            link.close(errors.Unavailable(f"{link.peer} closed the connection"))
        except grpc.RpcError as exc:
            link.close(_status_error(exc, link.peer))
        except Exception as exc:  # a decoding error is the peer's fault; say so and stop
            link.close(errors.Internal(f"stream from {link.peer} failed: {exc!r}"))

    link.on_close.append(lambda error: call.cancel())
    threading.Thread(target=pump, name=f"distautograd-recv-{link.peer}", daemon=True).start()
    return call


def peer_identity(context: grpc.ServicerContext) -> tuple:
    meta = dict(context.invocation_metadata() or ())
    name = meta.get(PEER_NAME_KEY, "")
    try:
        rank = int(meta.get(PEER_RANK_KEY, "-1"))
    except ValueError:
        rank = -1
    return name, rank


def serve_stream(raw_frames: Iterable[bytes], context: grpc.ServicerContext, link: Link, on_end: Callable[[], None]):
    """Runs ``link`` over an incoming stream (the handler's response iterator).

    Frames are parsed here rather than by gRPC, so a malformed one ends the stream with
    INVALID_ARGUMENT instead of an internal error, and the server goes on serving everyone else.
    """

    stream = GrpcStreamTransport(link)

    def pump() -> None:
        try:
            for raw in raw_frames:
                try:
                    frame = pb.Frame.FromString(raw)
                except DecodeError as exc:
                    link.fail_protocol(f"undecodable frame ({exc})")
                    return
                stream.receive(frame)
                del frame, raw  # not kept alive while waiting for the next one
                if link.closed:
                    return
            link.close(errors.Unavailable(f"{link.peer} closed the connection"))
        except grpc.RpcError as exc:
            link.close(_status_error(exc, link.peer))
        except Exception as exc:
            link.close(errors.Unavailable(f"connection to {link.peer} lost: {exc!r}"))
        finally:
            on_end()

    context.add_callback(lambda: link.close(errors.Unavailable(f"connection to {link.peer} lost")))
    threading.Thread(target=pump, name=f"distautograd-recv-{link.peer}", daemon=True).start()
    for frame in stream.frames():
        yield frame.SerializeToString()
    if link.fatal is not None:
        context.abort(link.fatal.code, str(link.fatal))


def parse_frame(raw: bytes, context: grpc.ServicerContext) -> pb.Frame:
    try:
        return pb.Frame.FromString(raw)
    except DecodeError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed Frame: {exc}")


def raw_stream_handler(behavior) -> grpc.RpcMethodHandler:
    return grpc.stream_stream_rpc_method_handler(behavior)


def raw_unary_handler(behavior) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(behavior)
