"""Requests and responses multiplexed over one bidirectional stream of Frames, with chunked attachments.

Both ends of a stream hold a Link. Either may send requests; each response names the request it
answers. Attachments (raw tensor bytes) ride inline in the frame when small, or follow it as Chunk
frames when large, so no single gRPC message exceeds the configured limit.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

from distautograd import errors
from distautograd.transport.deadlines import Deadlines
from distautograd.v1 import wire_pb2 as pb

log = logging.getLogger("distautograd")

CHUNK_BYTES = 4 << 20
INLINE_LIMIT = 4 << 20
MAX_MESSAGE_BYTES = 64 << 20  # every server and channel sets this explicitly; chunks stay far below it

RequestHandler = Callable[["Link", int, pb.Request, List[Any]], None]
_STOP = object()


class Link:
    """One end of a stream: sends requests and responses, matches responses to their requests."""

    def __init__(
        self,
        peer: str,
        on_request: RequestHandler,
        deadlines: Deadlines,
        max_attachment_bytes: int = 1 << 40,
        resolve_type=None,
    ):
        self.peer = peer
        self._on_request = on_request
        self._deadlines = deadlines
        self._max_attachment_bytes = max_attachment_bytes
        self._resolve_type = resolve_type
        self._outbox: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._pending: dict[int, Tuple[Future, Optional[int]]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed: Optional[BaseException] = None
        self._incoming: Optional[_Incoming] = None
        self.fatal: Optional[errors.RpcError] = None  # set when the peer broke the protocol
        self.on_close: List[Callable[[BaseException], None]] = []

    # ------------------------------------------------------------------ sending

    def request(
        self, request: pb.Request, attachments: Sequence[Any] = (), timeout: Optional[float] = None
    ) -> "Future[Tuple[pb.Response, List[Any]]]":
        """Sends a request; the future holds (response, attachments) or the error the peer reported."""
        future: Future = Future()
        frame_id = next(self._ids)
        if timeout:
            request.timeout = timeout
        with self._lock:
            if self._closed is not None:
                future.set_exception(self._closed)
                return future
            handle = None
            if timeout:
                handle = self._deadlines.schedule(timeout, lambda: self._expire(frame_id, timeout))
            self._pending[frame_id] = (future, handle)
        self._put(frame_id, "request", request, attachments)
        return future

    def notify(self, request: pb.Request, attachments: Sequence[Any] = ()) -> None:
        """Sends a request that gets no response."""
        if self._closed is None:
            self._put(0, "request", request, attachments)

    def respond(self, frame_id: int, response: pb.Response, attachments: Sequence[Any] = ()) -> None:
        if frame_id and self._closed is None:
            self._put(frame_id, "response", response, attachments)

    def _put(self, frame_id: int, kind: str, message, attachments: Sequence[Any]) -> None:
        views = [memoryview(a).cast("B") if not isinstance(a, bytes) else a for a in attachments]
        total = sum(len(v) for v in views)
        if total <= INLINE_LIMIT:
            if views:
                message.attachments.inline.extend(bytes(v) for v in views)
            self._outbox.put(pb.Frame(id=frame_id, **{kind: message}))
        else:
            message.attachments.streamed_sizes.extend(len(v) for v in views)
            self._outbox.put(_chunked(pb.Frame(id=frame_id, **{kind: message}), views))

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

    # ------------------------------------------------------------------ receiving

    def receive(self, frame: pb.Frame) -> None:
        """Takes one incoming frame (called by the thread that reads the stream)."""
        incoming = self._incoming
        if incoming is not None:
            if frame.WhichOneof("kind") != "chunk":
                self.fail_protocol("a frame arrived before the chunks of the previous one were complete")
                return
            try:
                done = incoming.add(frame.chunk.data)
            except errors.InvalidArgument as exc:
                self.fail_protocol(str(exc))
                return
            if done:
                self._incoming = None
                if not incoming.discard:
                    self._deliver(incoming.frame, incoming.buffers)
            return
        kind = frame.WhichOneof("kind")
        if kind == "chunk":
            self.fail_protocol("a chunk arrived without a frame to belong to")
            return
        message = getattr(frame, kind) if kind else None
        if message is None:
            self.fail_protocol("a frame arrived with neither a request nor a response")
            return
        sizes = list(message.attachments.streamed_sizes)
        if sizes:
            if sum(sizes) > self._max_attachment_bytes:
                self._refuse_oversized(frame, kind, sum(sizes))
                self._incoming = _Incoming(frame, sizes, discard=True)
            else:
                self._incoming = _Incoming(frame, sizes)
            if self._incoming.complete:
                incoming, self._incoming = self._incoming, None
                if not incoming.discard:
                    self._deliver(frame, incoming.buffers)
            return
        self._deliver(frame, list(message.attachments.inline))

    def _deliver(self, frame: pb.Frame, attachments: List[Any]) -> None:
        if frame.WhichOneof("kind") == "request":
            try:
                self._on_request(self, frame.id, frame.request, attachments)
            except Exception as exc:  # the handler reports its own errors; this is a last resort
                log.exception("request handler failed for %s", self.peer)
                self.respond(frame.id, pb.Response(error=errors.to_proto(exc, "")))
            return
        with self._lock:
            entry = self._pending.pop(frame.id, None)
        if entry is None:
            return  # answered after its deadline; the caller has moved on
        future, handle = entry
        if handle is not None:
            self._deadlines.cancel(handle)
        response = frame.response
        if response.HasField("error"):
            future.set_exception(errors.from_proto(response.error, self._resolve_type))
        else:
            future.set_result((response, attachments))

    def _refuse_oversized(self, frame: pb.Frame, kind: str, size: int) -> None:
        err = errors.ResourceExhausted(
            f"message of {size} bytes exceeds this process's limit of {self._max_attachment_bytes} bytes"
        )
        if kind == "request":
            self.respond(frame.id, pb.Response(error=errors.to_proto(err, "")))
        else:
            self._fail_pending(frame.id, err)

    def _expire(self, frame_id: int, timeout: float) -> None:
        self._fail_pending(
            frame_id,
            errors.DeadlineExceeded(f"no response from {self.peer} within the timeout of {timeout:g} s"),
        )

    def _fail_pending(self, frame_id: int, exc: BaseException) -> None:
        with self._lock:
            entry = self._pending.pop(frame_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(exc)

    # ------------------------------------------------------------------ closing

    def fail_protocol(self, why: str) -> None:
        """The peer sent something malformed: end the stream with INVALID_ARGUMENT."""
        self.fatal = errors.InvalidArgument(f"malformed stream from {self.peer}: {why}")
        self.close(self.fatal)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self, error: BaseException) -> None:
        """Fails every pending request with ``error`` and ends the outgoing stream."""
        with self._lock:
            if self._closed is not None:
                return
            self._closed = error
            pending, self._pending = self._pending, {}
        self._outbox.put(_STOP)
        for future, handle in pending.values():
            if handle is not None:
                self._deadlines.cancel(handle)
            if not future.done():
                future.set_exception(error)
        for callback in self.on_close:
            try:
                callback(error)
            except Exception:
                log.exception("link close callback failed")


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
