"""Requests and responses multiplexed over one connection: pending calls, deadlines, delivery.

Both ends of a connection hold a Link. Either may send requests; each response names the
request it answers. How frames move is a ``Transport``'s business: a gRPC stream
(grpc_stream.GrpcStreamTransport), a socket (sockets.SocketTransport) or, inside one process,
a queue (local.LocalTransport).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple

from distautograd import errors
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.pushes import ArrivedPush
from distautograd.protocol.v1 import messages_pb2 as pb

log = logging.getLogger("distautograd")

MAX_MESSAGE_BYTES = 64 << 20  # every gRPC server and channel sets this explicitly; chunks stay far below it

RequestHandler = Callable[["Link", int, pb.Request, List[Any]], None]
# Called once with (response, attachments, None) or (None, None, error).
Completion = Callable[[Optional[pb.Response], Optional[List[Any]], Optional[BaseException]], None]


class Serialized(bytes):
    """A Request already serialized (by the compiled core: encoding/tensor_lists.encode_push) and
    without its attachments' description, which the transport adds as it sends; a Link sends it as it
    sends a pb.Request."""


def as_protobuf(message):
    """The message as protobuf: a Serialized request parsed, any other message as it is."""
    return pb.Request.FromString(message) if isinstance(message, Serialized) else message


class Transport(Protocol):
    """What moves a Link's frames. ``send`` raises errors.Unavailable when the frame cannot go;
    ``message`` is a pb.Request or pb.Response, or a Serialized request. The transport describes
    the attachments in the message it sends (replacing any description it held: a message sent again
    is described once)."""

    kind: str  # "unix", "tcp", "grpc" or "local"

    def send(self, frame_id: int, kind: str, message, attachments: Sequence[Any]) -> None: ...

    def close(self) -> None: ...


def _into_future(future: Future) -> Completion:
    def complete(response, attachments, error) -> None:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result((response, attachments))

    return complete


class Link:
    """One end of a connection: sends requests and responses, matches responses to their requests."""

    def __init__(
        self,
        peer: str,
        on_request: RequestHandler,
        deadlines: Deadlines,
        max_attachment_bytes: int = 16 << 20,
        resolve_type=None,
    ):
        self.peer = peer
        self.peer_rank = -1
        self.transport: Optional[Transport] = None  # set by whoever opens the connection
        self.max_attachment_bytes = max_attachment_bytes
        self._on_request = on_request
        # where a push the core read goes as it is (Dispatcher.take_push); None: as its frame, to on_request
        self.on_push: Optional[Callable[["Link", ArrivedPush], None]] = getattr(on_request, "take_push", None)
        # the core's PushLane, where pushes the core reads may run straight into their parts (set by
        # whoever runs backward passes), or None
        self.push_lane = None
        self._deadlines = deadlines
        self._resolve_type = resolve_type
        self._pending: dict[int, Tuple[Completion, Optional[int]]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed: Optional[BaseException] = None
        self.fatal: Optional[errors.RpcError] = None  # set when the peer broke the protocol
        self.on_close: List[Callable[[BaseException], None]] = []
        self.last_heard = time.monotonic()  # when a frame last came from the peer (or the link was made)

    # ------------------------------------------------------------------ sending

    def request(
        self, request: pb.Request, attachments: Sequence[Any] = (), timeout: Optional[float] = None
    ) -> "Future[Tuple[pb.Response, List[Any]]]":
        """Sends a request; the future holds (response, attachments) or the error the peer reported."""
        future: Future = Future()
        self.send_request(request, attachments, timeout, _into_future(future))
        return future

    def send_request(
        self, request: pb.Request, attachments: Sequence[Any], timeout: Optional[float], complete: Completion
    ) -> None:
        """Sends a request; ``complete`` is called once, from whichever thread learns the outcome."""
        frame_id = next(self._ids)
        if timeout:
            request.timeout = timeout
        with self._lock:
            if self._closed is not None:
                closed = self._closed
            else:
                closed = None
                handle = self._deadlines.schedule(timeout, lambda: self._expire(frame_id, timeout)) if timeout else None
                self._pending[frame_id] = (complete, handle)
        if closed is not None:
            complete(None, None, closed)
            return
        try:
            self.transport.send(frame_id, "request", request, attachments)
        except BaseException as exc:
            self._fail_pending(frame_id, exc if isinstance(exc, errors.RpcError) else errors.Unavailable(
                f"could not send to {self.peer}: {exc}"))

    def notify(self, request: pb.Request | Serialized, attachments: Sequence[Any] = ()) -> None:
        """Sends a request that gets no response; raises errors.Unavailable if it cannot go (the
        link is then closed, so whoever retries opens a fresh connection)."""
        closed = self._closed
        if closed is not None:
            raise closed if isinstance(closed, errors.Unavailable) else errors.Unavailable(
                f"the connection to {self.peer} is closed: {closed}")
        try:
            self.transport.send(0, "request", request, attachments)
        except errors.Unavailable as exc:
            self.close(exc)
            raise

    def try_notify(self, request: pb.Request | Serialized, attachments: Sequence[Any] = ()) -> bool:
        """notify() for messages whose loss only matters to a peer that is gone anyway."""
        try:
            self.notify(request, attachments)
            return True
        except errors.Unavailable as exc:
            log.debug("notification to %s lost: %s", self.peer, exc)
            return False

    def respond(self, frame_id: int, response: pb.Response, attachments: Sequence[Any] = ()) -> None:
        if frame_id and self._closed is None:
            try:
                self.transport.send(frame_id, "response", response, attachments)
            except Exception as exc:
                log.debug("response to %s lost: %s", self.peer, exc)

    # ------------------------------------------------------------------ receiving

    def deliver(self, frame: pb.Frame, attachments: List[Any]) -> None:
        """Takes one complete incoming frame with its attachments (called by the wire's reader)."""
        self.last_heard = time.monotonic()
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
        complete, handle = entry
        if handle is not None:
            self._deadlines.cancel(handle)
        response = frame.response
        if response.HasField("error"):
            complete(None, None, errors.from_proto(response.error, self._resolve_type))
        else:
            complete(response, attachments, None)

    def deliver_push(self, push: ArrivedPush) -> None:
        """Takes a push the core read (transport.pushes): to ``on_push``, or as its frame where there is
        none."""
        if self.on_push is None:
            self.deliver(push.frame(), push.attachments)
            return
        self.last_heard = time.monotonic()
        try:
            self.on_push(self, push)
        except Exception:  # the handler reports its own errors; a push has nobody to answer
            log.exception("request handler failed for %s", self.peer)

    def refuse_oversized(self, frame: pb.Frame, size: int) -> None:
        """The frame's attachments exceed this process's limit: answer RESOURCE_EXHAUSTED."""
        err = errors.ResourceExhausted(
            f"message of {size} bytes exceeds this process's limit of {self.max_attachment_bytes} bytes"
        )
        if frame.WhichOneof("kind") == "request":
            self.respond(frame.id, pb.Response(error=errors.to_proto(err, "")))
        else:
            self._fail_pending(frame.id, err)

    def _expire(self, frame_id: int, timeout: float) -> None:
        self._fail_pending(
            frame_id,
            errors.DeadlineExceeded(f"RPC ran for more than set timeout ({timeout * 1000:g} ms) and will now be "
                                    f"marked with an error: no response from {self.peer} within the timeout of "
                                    f"{timeout:g} s"),
        )

    def _fail_pending(self, frame_id: int, exc: BaseException) -> None:
        with self._lock:
            entry = self._pending.pop(frame_id, None)
        if entry is not None:
            if entry[1] is not None:
                self._deadlines.cancel(entry[1])
            entry[0](None, None, exc)

    # ------------------------------------------------------------------ closing

    def fail_protocol(self, why: str) -> None:
        """The peer sent something malformed: end the connection with INVALID_ARGUMENT."""
        self.fatal = errors.InvalidArgument(f"malformed stream from {self.peer}: {why}")
        self.close(self.fatal)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def closed_with(self) -> Optional[BaseException]:
        """The error the link was closed with (None while open)."""
        return self._closed

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self, error: BaseException) -> None:
        """Fails every pending request with ``error`` and ends the connection."""
        with self._lock:
            if self._closed is not None:
                return
            self._closed = error
            pending, self._pending = self._pending, {}
        if self.transport is not None:
            self.transport.close()
        for complete, handle in pending.values():
            if handle is not None:
                self._deadlines.cancel(handle)
            complete(None, None, error)
        for callback in self.on_close:
            try:
                callback(error)
            except Exception:
                log.exception("link close callback failed")
