"""From request to handler and back: results and exceptions become responses in this one place.

Handlers take ``(link, body, attachments)`` and return None (an empty response), a Response,
``(Response, attachments)``, or a Future of one of those; whatever they raise travels back as
an Error with its gRPC status. Inline handlers run in the thread reading the stream, so in
arrival order; the rest go to worker threads.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import CancelledError, Future
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import grpc

from distautograd import errors
from distautograd.transport import grpc_server
from distautograd.transport.pushes import ArrivedPush
from distautograd.transport.shares import Shares
from distautograd.protocol.v1 import messages_pb2 as pb

log = logging.getLogger("distautograd")

Handler = Callable[[Any, Any, list], Any]
_UNSET = object()
MAX_UNARY = 32  # Worker.Call requests waiting at once; gRPC's pool has threads to spare for health and streams
PEER_UNARY = 8  # of those, what one caller may hold: one caller's waiting fetches cannot lock out the rest
_FOREVER = 10 ** 6  # a deadline further off than this is no deadline (and overflows a timeout)


class Deferred:
    """A reply a handler gives later, without the cost of a Future: whoever produces it calls
    ``resolve(result or exception)``; the dispatcher says with ``then`` where it goes."""

    __slots__ = ("_callback", "_outcome", "_lock")

    def __init__(self) -> None:
        self._callback = None
        self._outcome = _UNSET
        self._lock = threading.Lock()

    def resolve(self, outcome) -> None:
        """Settles the reply; only the first outcome counts."""
        with self._lock:
            if self._outcome is not _UNSET:
                return
            self._outcome = outcome
            callback = self._callback
        if callback is not None:
            callback(outcome)

    def then(self, callback) -> None:
        with self._lock:
            if self._outcome is _UNSET:
                self._callback = callback
                return
        callback(self._outcome)


class Dispatcher:
    def __init__(
        self,
        owner: str,
        handlers: Dict[str, Tuple[Handler, bool]],
        submit: Optional[Callable[..., Future]] = None,
        check: Optional[Callable[[Any, str], None]] = None,
        calls: Optional[Shares] = None,
        data: Optional[Shares] = None,
    ):
        """``calls``: the requests each peer may have waiting or running here; ``data``: the bytes their
        tensors take while they wait or run (None: no limit)."""
        self.owner = owner
        self._handlers = handlers
        self._submit = submit
        self._check = check
        self.calls = calls
        self.data = data
        self._unary_slots = grpc_server.Slots(
            "Worker.Call requests", MAX_UNARY, PEER_UNARY,
            lambda limit: f"{owner} is answering {limit} Worker.Call requests already; use Worker.Connect")

    @property
    def unary_shares(self) -> Shares:
        return self._unary_slots.shares

    def __call__(self, link, frame_id: int, request: pb.Request, attachments: list) -> None:
        kind = request.WhichOneof("body")
        admitted = self._admit(link, frame_id, kind, attachments)
        if admitted is not None:
            self._run(*admitted, link, frame_id, getattr(request, kind), attachments)

    def take_push(self, link, push: ArrivedPush) -> None:
        """A push the core read (a notification): the push_gradients handler takes it for its body."""
        admitted = self._admit(link, 0, "push_gradients", push.attachments)
        if admitted is not None:
            self._run(*admitted, link, 0, push, push.attachments)

    def _admit(self, link, frame_id: int, kind: Optional[str], attachments: list) -> Optional[tuple]:
        """(the handler, whether it runs inline, the bytes taken of the peer's shares or None); None when
        the request is refused (and answered so)."""
        handler = self._handlers.get(kind)
        counted = None  # or the bytes taken with one request of the peer's shares
        try:
            if handler is None:
                raise errors.InvalidArgument(f"{self.owner} does not take {kind or 'empty'} requests")
            if self._check is not None:
                self._check(link, kind)
            if frame_id and self.calls is not None:
                counted = self._count(link.peer, sum(memoryview(a).nbytes for a in attachments))
        except BaseException as exc:
            self.reply(link, frame_id, exc)
            return None
        return handler[0], handler[1], counted

    def _run(self, fn: Handler, inline: bool, counted: Optional[int], link, frame_id: int, body, attachments) -> None:
        if inline or self._submit is None:
            self._handle(fn, link, frame_id, body, attachments, counted)
            return
        try:
            self._submit(self._handle, fn, link, frame_id, body, attachments, counted)
        except RuntimeError:
            self._answer(link, frame_id, errors.Unavailable(f"{self.owner} is shutting down"), counted)

    def _handle(self, fn: Handler, link, frame_id: int, body, attachments, counted: Optional[int] = None) -> None:
        try:
            result = fn(link, body, attachments)
        except BaseException as exc:
            self._answer(link, frame_id, exc, counted)
            return
        if isinstance(result, Deferred):
            result.then(lambda outcome: self._answer(link, frame_id, outcome, counted))
        elif isinstance(result, Future):
            result.add_done_callback(lambda f: self._answer(link, frame_id, f.exception() or f.result(), counted))
        else:
            self._answer(link, frame_id, result, counted)

    def _count(self, peer: str, size: int) -> int:
        """Takes one request and ``size`` bytes of the peer's shares; raises RESOURCE_EXHAUSTED if over."""
        refused = self.calls.take(peer)
        if refused is None and size and self.data is not None:
            refused = self.data.take(peer, size)
            if refused is not None:
                self.calls.give_back(peer)
        if refused is not None:
            raise errors.ResourceExhausted(f"{self.owner}: {refused}")
        return size if self.data is not None else 0

    def _answer(self, link, frame_id: int, result, counted: Optional[int]) -> None:
        """``counted``: None, or the bytes (possibly 0) taken with one request of the peer's shares."""
        if counted is not None:
            self.calls.give_back(link.peer)  # before the reply: a caller that sends again at once has room
            if counted:
                self.data.give_back(link.peer, counted)
        self.reply(link, frame_id, result)

    def reply(self, link, frame_id: int, result) -> None:
        if not frame_id:
            if isinstance(result, BaseException):
                log.warning("notification from %s failed: %s", link.peer, result)
            return
        attachments: Sequence[Any] = ()
        if isinstance(result, BaseException):
            response = pb.Response(error=errors.to_proto(result, self.owner))
        elif result is None:
            response = pb.Response(empty=pb.Empty())
        elif isinstance(result, tuple):
            response, attachments = result
        else:
            response = result
        link.respond(frame_id, response, attachments)

    def serve_unary(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        """One request without a stream (Worker.Call): for tools and clients in other languages.

        It holds one of the server's threads while it waits, so at most MAX_UNARY wait at once (the
        health check must always find a thread), at most PEER_UNARY of them one caller's, and a caller
        that cancels or goes away frees it."""
        caller = grpc_server.caller(context)
        with self._unary_slots.held(context, caller):
            return self._serve_unary(raw, context, caller)

    def _serve_unary(self, raw: bytes, context: grpc.ServicerContext, caller: str) -> bytes:
        frame = grpc_server.parse_frame(raw, context)
        if frame.WhichOneof("kind") != "request" or frame.request.attachments.streamed_sizes:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Worker.Call takes one request frame with inline attachments")
        oneshot = _OneShot(caller, grpc_server.peer_identity(context)[1])
        context.add_callback(oneshot.abandon)  # the call ended (cancelled, or the caller went): stop waiting
        self(oneshot, frame.id or 1, frame.request, list(frame.request.attachments.inline))
        remaining = context.time_remaining()
        try:
            reply = oneshot.reply.result(timeout=None if remaining is None or remaining > _FOREVER else remaining)
        except TimeoutError:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call did not finish within its deadline")
        except CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the caller cancelled the call")
        return reply.SerializeToString()


class _OneShot:
    """Stands in for a Link when a request came as a single unary call."""

    def __init__(self, peer: str, rank: int):
        self.peer = peer
        self.peer_rank = rank
        self.reply: Future = Future()

    def respond(self, frame_id: int, response: pb.Response, attachments: Sequence[Any] = ()) -> None:
        response.attachments.inline.extend(bytes(memoryview(a).cast("B")) for a in attachments)
        if not self.reply.done():
            self.reply.set_result(pb.Frame(id=frame_id, response=response))

    def abandon(self) -> None:
        self.reply.cancel()
