"""The coordinator as a gRPC service: a stream per member, its requests dispatched, heartbeats watched."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Optional

import grpc

from distautograd import errors
from distautograd.config import BackendOptions
from distautograd.coordinator.contexts import ContextRegistry
from distautograd.coordinator.driver import BackwardDriver
from distautograd.coordinator.membership import Membership
from distautograd.transport import grpc_io, local, sockets
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.dispatch import Dispatcher
from distautograd.transport.link import Link
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.encoding.pickling import Allowlist

log = logging.getLogger("distautograd")

SERVICE = "distautograd.v1.Coordinator"


class Coordinator:
    def __init__(self, server: grpc_io.Server, options: BackendOptions):
        self.options = options
        security = options.security()
        self.deadlines = Deadlines("distautograd-coordinator-deadlines")
        self.resolve_type = Allowlist(options.all_allowed_modules()).resolve
        self.contexts = ContextRegistry()
        self.driver = BackwardDriver(self)
        self.membership = Membership(self._on_departed)
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
                    "start_backward": self._start_backward,
                    "pass_finished": self._pass_finished,
                    "context_event": self._context_event,
                }.items()
            },
            check=self._joined_first,
        )
        server.add_service(
            SERVICE,
            {
                "Connect": grpc_io.raw_stream_handler(self._serve),
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
        # Members may also reach the coordinator over a socket: control messages cost far less there.
        self.listener = sockets.Listener.for_options(
            "coordinator", security, self._accept_socket, server.host, options.transport
        )
        self.endpoints = pb.Endpoints(
            socket_port=self.listener.tcp_port if self.listener else 0,
            unix_path=self.listener.unix_path if self.listener else "",
            host_id=sockets.host_id(),
        )
        threading.Thread(target=self._watch_heartbeats, name="distautograd-heartbeat-watch", daemon=True).start()

    # ------------------------------------------------------------------ streams

    def _new_link(self) -> Link:
        link = Link("a worker that has not joined yet", self._dispatch, self.deadlines, resolve_type=self.resolve_type)
        link.left = False
        link.on_close.append(lambda error: self._closed(link, error))
        return link

    def _serve(self, raw_frames, context):
        yield from grpc_io.serve_stream(raw_frames, context, self._new_link(), lambda: None)

    def _accept_socket(self, sock, hello: pb.Hello) -> None:
        sockets.SocketTransport(self._new_link(), sock, None).start()

    def attach(self, link: Link) -> None:
        """Joins ``link``, of a worker in this process, to a new coordinator-side link."""
        local.connect(link, self._new_link())

    def _closed(self, link: Link, error: BaseException) -> None:
        if link.peer_rank >= 0 and not link.left and not self._stopped.is_set():
            member = self.membership.member(link.peer_rank)
            if member is not None and member.link is link:
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
            rank=link.peer_rank, world=snapshot, heartbeat_interval=self.options.heartbeat_interval
        ))

    def _heartbeat(self, link: Link, body: pb.Heartbeat, attachments=()) -> None:
        self.membership.heartbeat(link.peer_rank)

    def _leave(self, link: Link, body: pb.Leave, attachments=()) -> None:
        link.left = True
        self.membership.depart(link.peer_rank, "shut down" if body.graceful else "stopped", failed=False)

    def _barrier(self, link: Link, body: pb.Barrier, attachments=()) -> Future:
        return self.membership.barrier(link.peer_rank, body.name)

    def _start_backward(self, link: Link, body: pb.StartBackward, attachments=()) -> Future:
        return self.driver.start(link.peer_rank, body)

    def _pass_finished(self, link: Link, body: pb.PassFinished, attachments=()) -> None:
        self.driver.finished(link.peer_rank, body)

    def _context_event(self, link: Link, body: pb.ContextEvent, attachments=()) -> None:
        for context_id in body.closed:
            self.contexts.closed(context_id)

    def _status(self, request: pb.StatusRequest, context) -> pb.StatusReply:
        now = time.monotonic()
        return pb.StatusReply(
            workers=[
                pb.WorkerStatus(worker=m.entry, seconds_since_heartbeat=now - m.last_seen)
                for m in self.membership.members()
            ],
            contexts=self.contexts.status(),
            departed=self.membership.departed(),
        )

    # ------------------------------------------------------------------ failures

    def _on_departed(self, departure: pb.Departure) -> None:
        self.driver.on_departed(departure)
        orphans = self.contexts.on_departed(departure.rank)
        if orphans:
            self.deadlines.schedule(self.options.context_ttl, lambda: [self.contexts.closed(c) for c in orphans])

    def _watch_heartbeats(self) -> None:
        interval = max(0.05, min(self.options.heartbeat_interval, self.options.heartbeat_timeout / 4))
        while not self._stopped.wait(interval):
            for member in self.membership.stale(self.options.heartbeat_timeout):
                reason = f"no heartbeat for {self.options.heartbeat_timeout:g} s"
                self.membership.depart(member.entry.rank, reason, failed=True)
                member.link.close(errors.Unavailable(reason))

    # ------------------------------------------------------------------ lifecycle

    def wait_until_alone(self, rank: Optional[int], timeout: float) -> None:
        """Waits (bounded) until no member other than ``rank`` is left."""
        self.membership.wait_until(lambda ranks: ranks <= {rank}, timeout)

    def stop(self) -> None:
        self._stopped.set()
        if self.listener is not None:
            self.listener.close()
        self.driver.stop()
        for member in self.membership.members():
            member.link.close(errors.Unavailable("the coordinator is shutting down"))
        self.deadlines.stop()
