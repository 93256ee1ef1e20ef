"""Links over gRPC streams: frames both ways on one bidirectional stream, big attachments in chunks."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from distautograd import errors, metrics
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport.link import Link, as_protobuf

log = logging.getLogger("distautograd")

CHUNK_BYTES = 4 << 20
INLINE_LIMIT = 4 << 20
_STOP = object()
_EMPTY = b""


class GrpcStreamTransport:
    """Frames over a gRPC stream. Attachments ride inline when small; otherwise they follow their
    frame as Chunk frames, so no single gRPC message exceeds the configured limit."""

    kind = "grpc"

    def __init__(self, link: Link):
        self.link = link
        self._outbox: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._incoming: Optional[_Incoming] = None
        self._closed = False
        link.transport = self

    def send(self, frame_id: int, kind: str, message, attachments: Sequence[Any]) -> None:
        if self._closed:
            raise errors.Unavailable(f"the connection to {self.link.peer} is closed")
        message = as_protobuf(message)
        message.ClearField("attachments")
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
        self._closed = True
        self._incoming = None  # whatever half-arrived frame it held goes with the stream
        self._outbox.put(_STOP)

    def frames(self) -> Iterator[pb.Frame]:
        """The outgoing frames, for gRPC to send; ends when the link closes."""
        while True:
            item = self._outbox.get()
            if item is _STOP:
                return
            for frame in (item,) if isinstance(item, pb.Frame) else item:  # a frame, or a big one's chunks
                if metrics.ON:
                    metrics.SENT_BYTES.labels("grpc").inc(frame.ByteSize())
                yield frame

    def receive(self, frame: pb.Frame) -> None:
        """Takes one incoming frame (called by the thread that reads the stream)."""
        if metrics.ON:
            metrics.RECEIVED_BYTES.labels("grpc").inc(frame.ByteSize())
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
    """A frame whose streamed attachments are still arriving. Each attachment's buffer is made when
    its first chunk comes, and its pages are only committed as chunks fill them: memory grows with
    the bytes that arrived, not with what a frame declares."""

    def __init__(self, frame: pb.Frame, sizes: List[int], discard: bool = False):
        self.frame = frame
        self.discard = discard
        self.sizes = sizes
        self.buffers: List[Any] = [] if discard else [_EMPTY if size == 0 else None for size in sizes]
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
            if self.buffers[self._index] is None:
                self.buffers[self._index] = np.empty(size, dtype=np.uint8)
            self.buffers[self._index][self._offset : end] = np.frombuffer(data, dtype=np.uint8)
        self._offset = end
        self._skip_empty()
        return self.complete


def _status_error(exc: grpc.RpcError, peer: str) -> errors.RpcError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = errors.for_status(code)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
        if "keepalive" in (details or "").lower() or "timed out" in (details or "").lower():
            return errors.Unreachable(f"{peer} is unreachable: its connection timed out ({details})")
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


SILENT_BEFORE_END = 4.0  # seconds without a frame before a served stream ended: keepalive gave up (2 + 3 s)


def _ended(link: Link) -> errors.Unavailable:
    """Why a served stream ended, as far as the server can tell (gRPC says only that it did): a peer
    that was talking until then went away (its process, or its kernel, closed it); one silent for
    longer than keepalive allows stopped answering — unreachable, not known dead."""
    silent = time.monotonic() - link.last_heard
    if silent > SILENT_BEFORE_END:
        return errors.Unreachable(f"{link.peer} is unreachable: nothing came for {silent:.1f} s before its stream ended")
    return errors.Unavailable(f"connection to {link.peer} lost")


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
        except grpc.RpcError:
            link.close(_ended(link))
        except Exception as exc:
            link.close(errors.Unavailable(f"connection to {link.peer} lost: {exc!r}"))
        finally:
            on_end()

    context.add_callback(lambda: link.close(_ended(link)))
    threading.Thread(target=pump, name=f"distautograd-recv-{link.peer}", daemon=True).start()
    for frame in stream.frames():
        yield frame.SerializeToString()
    if link.fatal is not None:
        context.abort(link.fatal.code, str(link.fatal))


