"""This process's presence in the world: its server, joining the coordinator, sending to peers, stopping."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import Future
from typing import Callable, Optional

import grpc

from distautograd import __version__, errors
from distautograd.autograd.contexts import ContextStore
from distautograd.autograd.engine import BackwardEngine
from distautograd.config import BackendOptions
from distautograd.ids import MAX_RANK, IdMint
from distautograd.runtime.calls import Calls
from distautograd.runtime.codec import Codec
from distautograd.runtime.connections import WORKER_SERVICE, Connections
from distautograd.runtime.pool import WorkerPool
from distautograd.runtime.rrefs import UNSET_TIMEOUT, RRefStore
from distautograd.runtime.rendezvous import Rendezvous, join_address
from distautograd.runtime.world import WorkerInfo, WorldView
from distautograd.transport import grpc_io, sockets
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.dispatch import Dispatcher
from distautograd.transport.link import Link
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.encoding.pickling import Allowlist

log = logging.getLogger("distautograd")

COORDINATOR_SERVICE = "distautograd.v1.Coordinator"

_agent: Optional["Agent"] = None
_agent_lock = threading.Lock()


def current_agent() -> "Agent":
    agent = _agent
    if agent is None:
        raise RuntimeError("RPC has not been initialized. Call distautograd.rpc.init_rpc first.")
    return agent


def _route_to(host: str) -> str:
    """The local address the kernel would use to reach ``host``."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(host), 9))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


class Agent:
    def __init__(self, name: str, options: BackendOptions):
        self.name = name
        self.options = options
        self.security = options.security()
        self.allowlist = Allowlist(options.all_allowed_modules())
        self.rank = -1
        self.mint = IdMint()
        self.world = WorldView()
        self.deadlines = Deadlines()
        self._pool_threads = WorkerPool(options.num_worker_threads)
        self.stopping = threading.Event()
        self.server: Optional[grpc_io.Server] = None
        self.listener: Optional[sockets.Listener] = None
        self.coordinator = None
        self.coordinator_link: Optional[Link] = None
        self.codec = Codec(self)
        self.rrefs = RRefStore(self)
        self.contexts = ContextStore(self)
        self.engine = BackwardEngine(self)
        self.calls = Calls(self)
        self.address = ""
        self.dispatcher = Dispatcher(name, {
            # inline: runs in the thread reading the stream, so in arrival order; the rest on worker threads
            "call": (self.calls.handle_call, True),
            "fetch_rref": (self.rrefs.handle_fetch, True),
            "rref_forks": (self.rrefs.handle_forks, True),
            "push_gradients": (self.engine.handle_push, True),
            "release_context": (self.contexts.handle_release, True),
            "world_update": (self._handle_world_update, True),
            "abort_backward": (self.engine.handle_abort, True),
            "prepare_backward": (self.engine.handle_prepare, True),  # a graph walk: cheaper than a hand-off
            "run_backward": (self.engine.handle_run, True),  # hands compute off itself
        }, submit=self.submit)
        self.connections = Connections(self)

    # ------------------------------------------------------------------ starting

    def start(self, rank: int, world_size: Optional[int]) -> None:
        """Listens, joins the coordinator (hosting it if this is rank 0) and waits for the world."""
        options = self.options
        deadline = time.monotonic() + options.effective_init_timeout()
        rendezvous = Rendezvous(options, rank)
        host_it = rendezvous.host_it
        if host_it:
            listen_host, listen_port = rendezvous.listen()
        else:
            listen_host, listen_port = options.listen_host(rendezvous.host), options.listen_port()
        self.server = grpc_io.Server(listen_host, listen_port, self.security)
        if host_it:
            from distautograd.coordinator.service import Coordinator

            self.coordinator = Coordinator(self.server, options)
        self.server.add_service(
            WORKER_SERVICE,
            {
                "Connect": grpc_io.raw_stream_handler(self.connections.serve_connect),
                "Call": grpc_io.raw_unary_handler(self.dispatcher.serve_unary),
            },
        )
        self.server.start()
        self.listener = sockets.Listener.for_options(
            self.name, self.security, self.connections.accept_socket, listen_host, options.transport
        )
        if host_it:
            coordinator = rendezvous.publish(self.server.port)
        else:
            coordinator = rendezvous.address(max(1.0, deadline - time.monotonic()))
        if listen_host in ("0.0.0.0", "::", ""):
            advertise = options.advertise_host or os.environ.get("DISTAUTOGRAD_ADVERTISE_HOST") or _route_to(rendezvous.host)
        else:
            advertise = options.advertise_host or os.environ.get("DISTAUTOGRAD_ADVERTISE_HOST") or listen_host
        self.address = join_address(advertise, self.server.port)
        join = pb.Join(
            name=self.name,
            rank=rank,
            address=self.address,
            socket_address=join_address(advertise, self.listener.tcp_port) if self.listener and self.listener.tcp_port else "",
            unix_path=self.listener.unix_path if self.listener else "",
            host_id=self.connections.host_id,
            world_size=world_size or 0,
            daemon=options.daemon,
            pid=os.getpid(),
            host=socket.gethostname(),
            version=__version__,
        )
        reply = self._join(coordinator, join, deadline)
        self.rank = reply.rank
        self.mint.rank = reply.rank
        self.world.update(reply.world)
        log.info("%s joined as rank %d at %s (coordinator %s)", self.name, self.rank, self.address, coordinator)
        self._heartbeat_interval = reply.heartbeat_interval or options.heartbeat_interval
        threading.Thread(target=self._heartbeat, name="distautograd-heartbeat", daemon=True).start()
        if world_size:
            self._wait_for_world(world_size, deadline)

    def _join(self, coordinator: str, join: pb.Join, deadline: float) -> pb.JoinReply:
        chan = grpc_io.channel(coordinator, self.security)
        last: Optional[BaseException] = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                chan.close()
                raise RuntimeError(
                    f"could not join the coordinator at {coordinator} within "
                    f"{self.options.effective_init_timeout():g} s: {last}"
                )
            link = self.connections.new_link(f"the coordinator at {coordinator}", -1)
            sock = None if self.coordinator is not None else self._coordinator_socket(chan, coordinator, join, remaining)
            if self.coordinator is not None:
                self.coordinator.attach(link)  # hosted here: no connection needed
            elif sock is not None:
                sockets.SocketTransport(link, sock, None).start()
            else:
                grpc_io.open_stream(chan, f"/{COORDINATOR_SERVICE}/Connect", link, self.connections.metadata(rank=join.rank))
            try:
                response, _ = link.request(pb.Request(join=join), timeout=min(remaining, 10.0)).result()
            except (errors.Unavailable, errors.DeadlineExceeded) as exc:
                last = exc
                link.close(exc)
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            except BaseException:
                link.close(errors.Unavailable("join refused"))
                chan.close()
                raise
            self.coordinator_link = link
            self._coordinator_channel = chan
            link.on_close.append(self._coordinator_lost)
            return response.join

    def _coordinator_socket(self, chan, coordinator: str, join: pb.Join, remaining: float):
        """A socket to the coordinator when it offers one we can reach; None to stay on gRPC."""
        if self.options.transport == "grpc":
            return None
        try:
            get = chan.unary_unary(f"/{COORDINATOR_SERVICE}/GetEndpoints", request_serializer=pb.Empty.SerializeToString,
                                   response_deserializer=pb.Endpoints.FromString)
            endpoints = get(pb.Empty(), metadata=self.security.metadata(), timeout=min(remaining, 5.0))
        except grpc.RpcError:
            return None  # not up yet (the join loop retries) or an older coordinator: gRPC it is
        host = coordinator.rpartition(":")[0]
        entry = pb.WorkerEntry(
            name="coordinator", unix_path=endpoints.unix_path, host_id=endpoints.host_id,
            socket_address=join_address(host.strip("[]"), endpoints.socket_port) if endpoints.socket_port else "",
        )
        return self.connections.connect_socket(entry, rank=join.rank)

    def _wait_for_world(self, world_size: int, deadline: float) -> None:
        complete = self.world.wait_for(lambda: len(self.world.members()) >= world_size, deadline - time.monotonic())
        if not complete:
            present = {w.rank for w in self.world.members()}
            missing = [r for r in range(world_size) if r not in present]
            self.stop(graceful=False)
            raise RuntimeError(
                f"init_rpc timed out after {self.options.effective_init_timeout():g} s waiting for "
                f"{world_size} workers: rank(s) {', '.join(map(str, missing)) or '?'} never joined; "
                f"present: {self.world.describe()}"
            )

    def _heartbeat(self) -> None:
        while not self.stopping.wait(self._heartbeat_interval):
            self.coordinator_notify(pb.Request(heartbeat=pb.Heartbeat()))

    def _coordinator_lost(self, error: BaseException) -> None:
        if not self.stopping.is_set():
            log.error("%s lost its connection to the coordinator: %s", self.name, error)

    # ------------------------------------------------------------------ sending

    def request(self, rank: int, request: pb.Request, attachments=(), timeout: Optional[float] = None) -> Future:
        try:
            return self.connections.to(rank).request(request, attachments, timeout)
        except BaseException as exc:
            failed: Future = Future()
            failed.set_exception(exc)
            return failed

    def send_request(self, rank: int, request: pb.Request, attachments, timeout: Optional[float], complete) -> None:
        """Like request(), completing through a callback: the fast path of every rpc."""
        try:
            link = self.connections.to(rank)
        except BaseException as exc:
            complete(None, None, exc)
            return
        link.send_request(request, attachments, timeout, complete)

    def send_now(self, rank: int, request: pb.Request, attachments=()) -> None:
        """Sends a notification, raising if it cannot be handed to the connection (which is then
        closed, so a retry opens a fresh one)."""
        link = self.connections.to(rank)
        try:
            link.transport.send(0, "request", request, attachments)
        except errors.Unavailable as exc:
            link.close(exc)
            raise

    def notify(self, rank: int, request: pb.Request, attachments=()) -> None:
        self.connections.to(rank).notify(request, attachments)

    def coordinator_request(self, request: pb.Request, timeout: Optional[float] = None) -> Future:
        link = self.coordinator_link
        if link is None:
            raise RuntimeError("RPC has not been initialized. Call distautograd.rpc.init_rpc first.")
        return link.request(request, (), timeout)

    def coordinator_notify(self, request: pb.Request) -> None:
        if self.coordinator_link is not None:
            self.coordinator_link.notify(request)

    def timeout(self, timeout: Optional[float]) -> Optional[float]:
        """A call's timeout in seconds: unset means the default, 0 means none."""
        if timeout is None or timeout == UNSET_TIMEOUT:
            timeout = self.options.rpc_timeout
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds (0 = no limit), got {timeout}")
        return timeout or None

    def default_timeout(self) -> Optional[float]:
        return self.timeout(None)

    def submit(self, fn: Callable, *args) -> None:
        self._pool_threads.submit(fn, *args)

    # ------------------------------------------------------------------ serving

    def _handle_world_update(self, link, update: pb.WorldUpdate, attachments) -> None:
        for gone in self.world.update(update):
            how = "died" if gone.failed else "left"
            (log.warning if gone.failed else log.info)("worker %s (rank %d) %s: %s", gone.name, gone.rank, how, gone.reason)
            self.connections.close_peer(
                gone.rank, errors.Unavailable(f"worker '{gone.name}' (rank {gone.rank}) {how}: {gone.reason}")
            )
            self.rrefs.on_departed(gone.rank)
            self.contexts.on_departed(gone.rank)

    # ------------------------------------------------------------------ stopping

    def stop(self, graceful: bool, timeout: Optional[float] = None) -> None:
        """Leaves the world. Graceful: first wait until every non-daemon worker is here and all work is done."""
        problems = []
        if graceful and self.coordinator_link is not None and not self.coordinator_link.closed:
            limit = timeout or self.options.rpc_timeout or 60.0
            end = time.monotonic() + limit
            try:
                self._barrier("shutdown", end)
                while self.connections.pending_requests() and time.monotonic() < end:
                    time.sleep(0.01)
                self.calls.wait_idle(max(0.0, end - time.monotonic()))
                self.rrefs.flush(max(0.1, min(5.0, end - time.monotonic())))
                self._barrier("shutdown-drained", end)
            except BaseException as exc:
                problems.append(exc)
        self.contexts.flush_releases()
        self.stopping.set()
        if self.coordinator_link is not None:
            self.coordinator_link.notify(pb.Request(leave=pb.Leave(graceful=graceful)))
        if self.coordinator is not None:
            self.coordinator.wait_until_alone(self.rank, 10.0 if graceful else 0.5)
        self._close_everything()
        if problems:
            raise problems[0]

    def _barrier(self, name: str, end: float) -> None:
        remaining = max(0.01, end - time.monotonic())
        try:
            self.coordinator_request(pb.Request(barrier=pb.Barrier(name=name)), remaining).result()
        except errors.DeadlineExceeded:
            raise RuntimeError(
                f"shutdown(graceful=True) timed out after {remaining:.3g} s at barrier '{name}': some workers "
                "never called shutdown; see `distautograd status`"
            ) from None

    def _close_everything(self) -> None:
        gone = errors.Unavailable(f"{self.name} is shut down")
        self.connections.close()
        if self.coordinator_link is not None:
            time.sleep(0.05)  # let the Leave reach the coordinator before the stream ends
            self.coordinator_link.close(gone)
        if self.coordinator is not None:
            self.coordinator.stop()
        if self.listener is not None:
            self.listener.close()
        if self.server is not None:
            self.server.stop(grace=0.5)
        if getattr(self, "_coordinator_channel", None) is not None:
            self._coordinator_channel.close()
        self._pool_threads.shutdown()
        self.rrefs.stop()
        self.deadlines.stop()

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.name, self.rank)


def install(agent: Optional[Agent]) -> None:
    global _agent
    with _agent_lock:
        _agent = agent


def validate_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 128:
        raise ValueError(f"worker name must be a non-empty string of at most 128 characters, got {name!r}")
    if not all(c.isalnum() or c in "_-.:" for c in name):
        raise ValueError(f"worker name {name!r} may only contain letters, digits and _ - . :")


def validate_rank(rank: int, world_size: Optional[int]) -> None:
    if rank > MAX_RANK:
        raise ValueError(f"rank {rank} is too large: ranks go up to {MAX_RANK}")
    if world_size is not None and rank >= world_size:
        raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
