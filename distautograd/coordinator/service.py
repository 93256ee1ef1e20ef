"""The coordinator as a service: a connection per member, its requests dispatched, heartbeats watched, passes aborted on departures."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import grpc

from distautograd import errors, metrics
from distautograd.coordinator.context_registry import ContextRegistry
from distautograd.coordinator.membership import Membership
from distautograd.coordinator.passes import PassRegistry
from distautograd.encoding.allowlist import Allowlist
from distautograd.protocol import COORDINATOR_SERVICE
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import grpc_server, grpc_stream, local, sockets
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.dispatch import Dispatcher
from distautograd.transport.link import Link
from distautograd.transport.security import Security, is_loopback

log = logging.getLogger("distautograd")


@dataclass(frozen=True)
class Settings:
    security: Security
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 10.0
    unreachable_timeout: float = 300.0  # the lease: unreachable this long, a member is dead
    context_ttl: float = 30.0
    transport: str = "auto"
    allowed_modules: Sequence[str] = ()


class Coordinator:
    def __init__(self, server: grpc_server.Server, settings: Settings):
        self.settings = settings
        self.deadlines = Deadlines("distautograd-coordinator-deadlines")
        self.resolve_type = Allowlist(settings.allowed_modules).resolve_exception
        self.contexts = ContextRegistry()
        self.passes = PassRegistry()
        self.membership = Membership(self._on_departed)
        self._left: Dict[Link, bool] = {}
        self._streams = grpc_server.Slots("streams", grpc_server.MAX_STREAMS, grpc_server.PEER_STREAMS,
                                          lambda limit: f"the coordinator has {limit} streams open already")
        self._stopped = threading.Event()
        self._dispatch = Dispatcher(
            "coordinator",
            {
                kind: (handler, True)
                for kind, handler in {
                    "join": self._join,
                    "heartbeat": self._heartbeat,
                    "leave": self._leave,
                    "barrier": self._barrier,
                    "pass_event": self._pass_event,
                    "context_event": self._context_event,
                }.items()
            },
            check=self._joined_first,
        )
        server.add_service(
            COORDINATOR_SERVICE,
            {
                "Connect": grpc_server.raw_stream_handler(self._serve),
                "Status": grpc.unary_unary_rpc_method_handler(
                    self._status,
                    request_deserializer=pb.StatusRequest.FromString,
                    response_serializer=pb.StatusReply.SerializeToString,
                ),
                "GetEndpoints": grpc.unary_unary_rpc_method_handler(
                    lambda request, context: self.endpoints,
                    request_deserializer=pb.Empty.FromString,
                    response_serializer=pb.Endpoints.SerializeToString,
                ),
            },
        )
        if is_loopback(server.host):
            settings.security.make_world_token()  # none configured: this world's, for its user only
        # Members may also reach the coordinator over a socket: control messages cost far less there.
        self.listener = sockets.Listener.for_options(
            "coordinator", settings.security, self._accept_socket, server.host, settings.transport,
            hands_out_token=settings.security.generated, silence=settings.heartbeat_timeout,
        )
        self.endpoints = pb.Endpoints(
            socket_port=self.listener.tcp_port if self.listener else 0,
            unix_path=self.listener.unix_path if self.listener else "",
            host_id=sockets.host_id(),
        )
        threading.Thread(target=self._watch_heartbeats, name="distautograd-heartbeat-watch", daemon=True).start()

    # ------------------------------------------------------------------ connections

    def _new_link(self) -> Link:
        link = Link("a worker that has not joined yet", self._dispatch, self.deadlines, resolve_type=self.resolve_type)
        link.on_close.append(lambda error: self._closed(link, error))
        return link

    def _serve(self, raw_frames, context):
        """A member's gRPC stream; each holds a server thread, so at most MAX_STREAMS at once."""
        with self._streams.held(context):
            yield from grpc_stream.serve_stream(raw_frames, context, self._new_link(), lambda: None)

    def _accept_socket(self, sock, hello: pb.Hello) -> None:
        # A member that takes no byte of a snapshot for the heartbeat timeout is unreachable: it must not
        # hold up every Join, verdict and stop behind a send stuck in its full buffers.
        sockets.SocketTransport(self._new_link(), sock, None, stall=self.settings.heartbeat_timeout).start()

    def attach(self, link: Link) -> None:
        """Joins ``link``, of a worker in this process, to a new coordinator-side link. The records
        of passes and contexts it sends are kept at once, in its own thread: they cost no message."""
        local.connect(link, self._new_link(), inline_from_a=("pass_event", "context_event"))

    def _closed(self, link: Link, error: BaseException) -> None:
        """A member's connection ended. Handled on the deadlines thread, never on the closing one: a
        send that fails inside a broadcast closes its link while the broadcast holds the send lock,
        and the verdict is a broadcast of its own."""
        self.deadlines.schedule(0, lambda: self._judge_closed(link, error))

    def _judge_closed(self, link: Link, error: BaseException) -> None:
        """Timed out, it is unreachable (it may come back and join again); closed or reset by its
        kernel, it is dead."""
        left = self._left.pop(link, False)
        if link.peer_rank >= 0 and not left and not self._stopped.is_set():
            member = self.membership.member(link.peer_rank)
            if member is None or member.link is not link:
                return
            if isinstance(error, errors.Unreachable):
                self._suspect(member, str(error))
            else:
                self.membership.depart(link.peer_rank, f"connection lost ({error})", failed=True)

    @staticmethod
    def _joined_first(link: Link, kind: str) -> None:
        if kind != "join" and link.peer_rank < 0:
            raise errors.FailedPrecondition("join first: the first request on a coordinator stream must be Join")

    # ------------------------------------------------------------------ requests

    def _join(self, link: Link, join: pb.Join, attachments=()) -> pb.Response:
        if link.peer_rank >= 0:
            raise errors.FailedPrecondition("this stream has already joined")
        snapshot = self.membership.join(link, join)
        return pb.Response(join=pb.JoinReply(
            rank=link.peer_rank, world=snapshot, heartbeat_interval=self.settings.heartbeat_interval
        ))

    def _heartbeat(self, link: Link, body: pb.Heartbeat, attachments=()) -> None:
        self.membership.heartbeat(link.peer_rank, body)

    def _leave(self, link: Link, body: pb.Leave, attachments=()) -> None:
        self._left[link] = True
        self.membership.depart(link.peer_rank, "shut down" if body.graceful else "stopped", failed=False)

    def _barrier(self, link: Link, body: pb.Barrier, attachments=()) -> Future:
        return self.membership.barrier(link.peer_rank, body.name)

    def _pass_event(self, link: Link, event: pb.PassEvent, attachments=()) -> None:
        if event.ended:
            self.passes.ended(event)
            self.contexts.pass_ended(event.context_id, event.leaves)
        else:
            self.passes.started(link.peer_rank, event)
            self.contexts.pass_began(event.context_id, event.participants)

    def _context_event(self, link: Link, body: pb.ContextEvent, attachments=()) -> None:
        for context_id in body.closed:
            self.contexts.closed(context_id)

    def _status(self, request: pb.StatusRequest, context) -> pb.StatusReply:
        return self.status()

    def status(self) -> pb.StatusReply:
        """The world now: each member with its heartbeat's age and load, open contexts, departures."""
        now = time.monotonic()
        return pb.StatusReply(
            workers=[
                pb.WorkerStatus(worker=m.entry, seconds_since_heartbeat=now - m.last_seen,
                                contexts=m.load.contexts, passes=m.load.passes, shares=m.load.shares)
                for m in self.membership.members()
            ],
            contexts=self.contexts.status(self.passes.in_flight),
            departed=self.membership.departed(),
        )

    # ------------------------------------------------------------------ failures

    def _on_departed(self, departure: pb.Departure) -> None:
        how = "died" if departure.failed else "left"
        self._abort_passes(departure.rank, lambda context_id: errors.Unavailable(
            f"worker '{departure.name}' (rank {departure.rank}) {how} during the backward pass of context "
            f"{context_id}: {departure.reason}", worker=departure.name))
        orphans = self.contexts.on_departed(departure.rank)
        if orphans:
            self.deadlines.schedule(self.settings.context_ttl, lambda: [self.contexts.closed(c) for c in orphans])

    def _suspect(self, member, reason: str) -> None:
        """Unreachable from here: shown as such, and its lease starts. Nothing it holds is released and
        no pass is stopped for it — peers that still reach it go on; those that do not find out on
        their own connections (see runtime.peers)."""
        self.membership.suspect(member.entry.rank, reason)

    def _abort_passes(self, rank: int, error_for) -> None:
        """Tells every other participant of each pass ``rank`` takes part in to stop it."""
        for record in self.passes.involving(rank):
            abort = pb.Request(abort_backward=pb.AbortBackward(
                context_id=record.context_id, pass_id=record.pass_id,
                error=errors.to_proto(error_for(record.context_id), "coordinator")))
            for other in record.participants - {rank}:
                member = self.membership.member(other)
                if member is not None:
                    member.link.try_notify(abort)

    def _watch_heartbeats(self) -> None:
        """Silent past the heartbeat timeout: unreachable. Unreachable past the lease: dead."""
        settings = self.settings
        interval = max(0.05, min(settings.heartbeat_interval, settings.heartbeat_timeout / 4))
        while not self._stopped.wait(interval):
            for member in self.membership.stale(settings.heartbeat_timeout):
                metrics.SILENT_MEMBERS.inc()
                self._suspect(member, f"no heartbeat for {settings.heartbeat_timeout:g} s")
            for member in self.membership.overdue(settings.unreachable_timeout):
                reason = f"unreachable for {settings.unreachable_timeout:g} s (unreachable_timeout)"
                gone = self.membership.depart(member.entry.rank, reason, failed=True, if_unreachable=True)
                if gone is not None:
                    gone.link.close(errors.Unavailable(reason))

    # ------------------------------------------------------------------ lifecycle

    def wait_until_alone(self, rank: Optional[int], timeout: float) -> None:
        """Waits (bounded) until no member other than ``rank`` is left."""
        self.membership.wait_until(lambda ranks: ranks <= {rank}, timeout)

    def stop(self) -> None:
        self._stopped.set()
        if self.listener is not None:
            self.listener.close()
        with self.membership.sending:  # a snapshot on its way goes out whole
            for member in self.membership.members():
                member.link.close(errors.Unavailable("the coordinator is shutting down"))
        self.deadlines.stop()
