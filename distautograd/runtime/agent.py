"""This process in the world, assembled in one place: its services and the narrow ports each gets, the routing
table of requests, joining the coordinator, serving, and stopping."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Dict, List, Optional

import grpc
import torch

from distautograd import __version__, errors, metrics, native
from distautograd.coordinator.service import Coordinator, Settings
from distautograd.encoding.allowlist import Allowlist, program_root
from distautograd.ids import MAX_RANK, IdMint
from distautograd.protocol import WORKER_SERVICE
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.backward import Backward
from distautograd.runtime.calls import Calls
from distautograd.runtime.codec import Codec
from distautograd.runtime.contexts import ContextStore
from distautograd.runtime.gil import GilSampler
from distautograd.views import trace
from distautograd.runtime import inspection, monitoring, optimizers, remote_modules  # noqa: F401  (peers call some)
from distautograd.runtime.notices import Notices
from distautograd.runtime.options import BackendOptions
from distautograd.runtime.peers import Peers
from distautograd.runtime.pool import WorkerPool
from distautograd.runtime.reconcile import Reconciler
from distautograd.runtime.rendezvous import Rendezvous, join_address
from distautograd.runtime.rrefs import RRefStore
from distautograd.runtime.world import WorkerInfo, WorldView, name_problem
from distautograd.transport import grpc_server, shm, sockets
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.http import HttpServer
from distautograd.transport.dispatch import Dispatcher
from distautograd.transport.shares import Shares
from distautograd.transport import paths
from distautograd.transport.paths import Channels, Connector, Endpoint

log = logging.getLogger("distautograd")
REJOIN_INTERVAL = 0.5  # seconds between attempts to join a coordinator that went away


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
        native.say_which_once()  # where the compiled core was not built: one line, once per process
        self.name = name
        self.options = options
        self.security = options.security()
        self.allowlist = Allowlist(options.all_allowed_modules(), program_root() if options.trusts_program() else None)
        self.mint = IdMint()
        self.incarnation = time.time_ns()  # this life of the process: a restart under the same name is another
        self.world = WorldView()
        self.deadlines = Deadlines()
        self.pool = WorkerPool(options.num_worker_threads)
        self.stopping = threading.Event()
        segments = shm.SegmentPool() if options.shared_memory and shm.available() is None else None
        self.connector = Connector(self.security, options.transport, segments, Channels(self.security),
                                   silence=options.heartbeat_timeout)
        self.peers = Peers(name, self.world, self.connector, self.deadlines, self.allowlist.resolve_exception,
                           self.stopping, options.max_message_bytes)
        self.contexts = ContextStore(name, self.mint, self.peers.notify, self.deadlines, options.context_ttl,
                                     lambda rank: self.world.entry(rank) is not None, options.peer_contexts)
        self.contexts.on_release.append(trace.forget)  # the events of a context nobody gathered
        self.rrefs = RRefStore(name, self.mint, self.peers.notify, self.world, options.peer_rrefs)
        self.codec = Codec(self.allowlist, self.rrefs, self.contexts, options.max_message_bytes)
        self.calls = Calls(name, self.peers, self.codec, self.contexts, self.rrefs, self.world, self.pool.submit,
                           options.call_timeout, self.deadlines, options.num_worker_threads)
        self.rrefs.runtime = self.calls
        self.backward = Backward(name, self.mint, self.peers, self.contexts, self.codec, self.deadlines,
                                 self.world.label, options.call_timeout, self.allowlist.resolve_exception)
        self.notices = Notices(name, self.incarnation, self.mint, self.world, self.peers, self.rrefs, self.contexts,
                               self.backward)
        self.reconciler = Reconciler(self.contexts, self.peers, self.stopping,
                                     lambda rank: self.world.entry(rank) is not None)
        self.dispatcher = Dispatcher(name, {
            # inline: runs in the thread reading the connection, so in arrival order; the rest on worker threads
            "call": (self.calls.handle_call, True),  # decodes in order, runs on a worker thread
            "fetch_rref": (self.calls.handle_fetch, True),
            "rref_forks": (self.rrefs.handle_forks, True),
            "release_context": (self.contexts.handle_release, True),
            "world_update": (self.notices.handle_world_update, True),
            "push_gradients": (self.backward.handle_push, True),  # runs the engine here: no hand-off
            "run_backward": (self.backward.handle_run, True),
            "pass_finished": (self.backward.handle_finished, True),
            "abort_backward": (self.backward.failures.handle_abort, True),
            "reach": (self.backward.handle_reach, False),
            "open_contexts": (self.reconciler.handle_open_contexts, True),
        }, submit=self.pool.submit, calls=Shares("requests", options.peer_calls, options.peer_calls * 4),
            data=Shares("bytes of tensors", options.peer_bytes))
        self.peers.deliver = self.dispatcher
        self.peers.push_lane = self.backward.push_lane
        self.peers.lost.append(self.backward.failures.on_peer_lost)
        self.peers.lost.append(self.reconciler.on_lost)
        self.rank = -1
        self.address = ""
        self.server: Optional[grpc_server.Server] = None
        self.listener: Optional[sockets.Listener] = None
        self.coordinator: Optional[Coordinator] = None
        self.http: Optional[HttpServer] = None  # metrics (and the coordinator's pages), if metrics_port asks
        self.gil = GilSampler()
        self.is_static_group = True  # torch's attribute: a world of a known size
        self._joins = 0
        self._coordinator_channel: Optional[grpc.Channel] = None
        self._coordinator_address = ""
        self._join_message = pb.Join()

    # ------------------------------------------------------------------ starting

    def start(self, rank: int, world_size: Optional[int], store: Any = None) -> None:
        """Listens, joins the coordinator (hosting it if this is rank 0) and waits for the world.
        ``store``: a torch Store every rank shares, to find the coordinator through (else the options say)."""
        options = self.options
        deadline = time.monotonic() + options.effective_init_timeout()
        rendezvous = Rendezvous(options, rank, world_size, store)
        self.is_static_group = bool(world_size)
        self.world.size, self.world.formed_within = world_size or 0, options.effective_init_timeout()
        host_it = rendezvous.host_it
        if host_it:
            listen_host, listen_port = rendezvous.listen()
        else:
            listen_host, listen_port = options.listen_host(rendezvous.host), options.listen_port()
        self.server = grpc_server.Server(listen_host, listen_port, self.security)
        if host_it:
            self.coordinator = Coordinator(self.server, Settings(
                security=self.security, heartbeat_interval=options.heartbeat_interval,
                heartbeat_timeout=options.heartbeat_timeout, context_ttl=options.context_ttl,
                unreachable_timeout=options.unreachable_timeout,
                transport=options.transport, allowed_modules=options.all_allowed_modules(),
            ))
        self.server.add_service(WORKER_SERVICE, {
            "Connect": grpc_server.raw_stream_handler(self.peers.serve_connect),
            "Call": grpc_server.raw_unary_handler(self.dispatcher.serve_unary),
        })
        self.server.start()
        self.listener = sockets.Listener.for_options(
            self.name, self.security, self.peers.accept_socket, listen_host, options.transport,
            silence=options.heartbeat_timeout,
        )
        if options.metrics_port is not None:
            self.http = monitoring.serve(listen_host, options.metrics_port, self.security, agent=self,
                                         coordinator=self.coordinator)
        if host_it:
            coordinator = rendezvous.publish(self.server.port)
        else:
            coordinator = rendezvous.address(max(1.0, deadline - time.monotonic()))
        advertise = options.advertise_host or os.environ.get("DISTAUTOGRAD_ADVERTISE_HOST")
        if not advertise:
            advertise = _route_to(rendezvous.host) if listen_host in ("0.0.0.0", "::", "") else listen_host
        self.address = join_address(advertise, self.server.port)
        listener = self.listener
        join = pb.Join(
            name=self.name,
            rank=rank,
            address=self.address,
            socket_address=join_address(advertise, listener.tcp_port) if listener and listener.tcp_port else "",
            unix_path=listener.unix_path if listener else "",
            host_id=self.connector.host_id,
            world_size=world_size or 0,
            daemon=options.daemon,
            pid=os.getpid(),
            host=socket.gethostname(),
            version=__version__,
            incarnation=self.incarnation,
            message_path=native.message_path(),
        )
        reply = self._join(coordinator, join, deadline)
        self.rank = reply.rank
        self.mint.rank = reply.rank
        if hasattr(torch._C, "_distributed_rpc"):  # torch's profiler marks this process's events with its rank
            torch._C._distributed_rpc._set_profiler_node_id(reply.rank)
        self.peers.joined(reply.rank)
        self.world.update(reply.world)
        self._coordinator_address, self._join_message = coordinator, join
        log.info("%s joined as rank %d at %s (coordinator %s)", self.name, self.rank, self.address, coordinator)
        interval = reply.heartbeat_interval or options.heartbeat_interval
        threading.Thread(target=self._heartbeat, args=(interval,), name="distautograd-heartbeat", daemon=True).start()
        if world_size:
            self._wait_for_world(world_size, deadline)

    def _join(self, coordinator: str, join: pb.Join, deadline: float) -> pb.JoinReply:
        last: Optional[BaseException] = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"could not join the coordinator at {coordinator} within "
                    f"{self.options.effective_init_timeout():g} s: {last}"
                )
            link = self.peers.new_link(f"the coordinator at {coordinator}", -1)
            if self.coordinator is not None:
                self.coordinator.attach(link)  # hosted here: no connection needed
            else:
                try:
                    endpoint = self._coordinator_endpoint(coordinator, remaining)
                    paths.fetch_world_token(self.security, endpoint, self.name)
                    self.connector.attach(link, endpoint, self.peers.hello("coordinator", join.rank),
                                          lambda: self.peers.metadata(join.rank))
                except (OSError, errors.Unavailable) as exc:  # not up yet: try again until the deadline
                    last = exc
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                    continue
            try:
                response, _ = link.request(pb.Request(join=join), timeout=min(remaining, 10.0)).result()
            except (errors.Unavailable, errors.DeadlineExceeded) as exc:
                last = exc
                link.close(exc)
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            except BaseException:
                link.close(errors.Unavailable("join refused"))
                raise
            self.peers.coordinator = link
            link.on_close.append(lambda error, link=link: self._coordinator_lost(error)
                                 if self.peers.coordinator is link else None)  # not an old one closing late
            return response.join

    def _coordinator_endpoint(self, coordinator: str, remaining: float) -> Endpoint:
        if self._coordinator_channel is None:
            self._coordinator_channel = grpc_server.channel(coordinator, self.security)
        return paths.coordinator_endpoint(self._coordinator_channel, coordinator, min(remaining, 5.0),
                                          self.security.metadata())

    def _wait_for_world(self, world_size: int, deadline: float) -> None:
        complete = self.world.wait_for(lambda: self.world.most >= world_size or self.world.cannot_form,
                                       deadline - time.monotonic())
        if self.world.cannot_form:
            if self.coordinator is not None:  # stay until every rank has asked, so each learns why
                self.coordinator.membership.wait_until_asked(world_size, max(0.0, deadline - time.monotonic()))
            self.stop(graceful=False)
            raise RuntimeError(self.world.cannot_form)
        if not complete:
            present = {w.rank for w in self.world.members()}
            missing = [r for r in range(world_size) if r not in present]
            self.stop(graceful=False)
            raise RuntimeError(
                f"init_rpc timed out after {self.options.effective_init_timeout():g} s waiting for "
                f"{world_size} workers: rank(s) {', '.join(map(str, missing)) or '?'} never joined; "
                f"present: {self.world.describe()}"
            )

    def _heartbeat(self, interval: float) -> None:
        while not self.stopping.wait(interval):
            link = self.peers.coordinator
            if link is not None and not link.try_notify(pb.Request(heartbeat=pb.Heartbeat(
                    contexts=self.contexts.count(), passes=len(self.backward.in_flight()), shares=self._shares()))):
                metrics.HEARTBEATS_UNSENT.inc()

    def _shares(self, most: int = 32) -> list:
        """What peers hold here of each resource counted per peer, the largest first (for status)."""
        held = [pb.PeerShare(peer=peer, resource=shares.resource, used=used, limit=shares.per_peer)
                for shares in (self.dispatcher.calls, self.dispatcher.data, self.dispatcher.unary_shares,
                               self.peers.stream_shares, self.contexts.brought, self.rrefs.held_by_peers)
                for peer, used in shares.snapshot().items()]
        return sorted(held, key=lambda share: share.used / share.limit, reverse=True)[:most]

    def _coordinator_lost(self, error: BaseException) -> None:
        """Without a coordinator this worker cannot be reached by newcomers: it says NOT_SERVING and
        joins again (same name, rank and incarnation) as soon as one answers there. Calls and passes
        between workers go on: the data plane does not need the coordinator."""
        if self.stopping.is_set() or self.coordinator is not None:
            return
        log.error("%s lost its connection to the coordinator at %s: %s; joining again when it is back",
                  self.name, self._coordinator_address, error)
        self.server.set_serving(False)
        threading.Thread(target=self._rejoin, name="distautograd-rejoin", daemon=True).start()

    def _rejoin(self) -> None:
        join = pb.Join()
        join.CopyFrom(self._join_message)
        join.rank = self.rank
        while not self.stopping.wait(REJOIN_INTERVAL):
            self.security.forget_world_token()  # a coordinator's next life makes its own
            try:
                reply = self._join(self._coordinator_address, join, time.monotonic() + REJOIN_INTERVAL * 4)
            except Exception as exc:
                log.debug("%s could not join again yet: %s", self.name, exc)
                continue
            self.world.replace(reply.world)
            self.server.set_serving(True)
            log.info("%s joined the coordinator at %s again as rank %d", self.name, self._coordinator_address, reply.rank)
            return

    # ------------------------------------------------------------------ stopping

    def join(self, shutdown: bool = False, timeout: float = 0) -> None:
        """Waits until this worker's calls are answered and its own work is done, then until every
        non-daemon worker has got that far (torch's agent.join; 0: the rpc timeout bounds it)."""
        end = self.drain(timeout)
        self._joins += 1
        self._barrier(f"join#{self._joins}", end, "shutdown" if shutdown else "join")

    def drain(self, timeout: float = 0) -> float:
        """Waits (bounded) until this worker's calls are answered, the calls it serves have run and its
        RRef releases are out; returns the deadline it used."""
        end = time.monotonic() + (timeout or self.options.rpc_timeout or 60.0)
        while self.peers.pending_requests() and time.monotonic() < end:
            time.sleep(0.01)
        self.calls.wait_idle(max(0.0, end - time.monotonic()))
        self.rrefs.flush(max(0.1, min(5.0, end - time.monotonic())))
        return end

    def stop(self, graceful: bool) -> None:
        """Leaves the world and closes everything. Graceful: the others were waited for already
        (rpc.shutdown); the coordinator's host then waits for the rest to leave first."""
        coordinator_link = self.peers.coordinator
        self.contexts.flush_releases()
        self.stopping.set()
        self.gil.enable(False)
        if coordinator_link is not None:
            coordinator_link.try_notify(pb.Request(leave=pb.Leave(graceful=graceful)))
        if self.coordinator is not None:
            self.coordinator.wait_until_alone(self.rank, 10.0 if graceful else 0.5)
        self._close_everything()

    # ------------------------------------------------------------------ what torch's agent tells

    def get_worker_info(self, name: Optional[str] = None) -> WorkerInfo:
        """This worker's WorkerInfo, or that of the worker ``name`` names (its name or, as torch's agent
        takes too, its rank)."""
        return self.info() if name is None else self.world.resolve(name)

    def get_worker_infos(self) -> List[WorkerInfo]:
        return [WorkerInfo(w.name, w.rank) for w in self.world.members()]

    def get_debug_info(self) -> Dict[str, str]:
        """torch's agent counters: requests waiting for an answer, the call threads, the GIL wait."""
        info = {"agent.num_pending_requests": str(self.peers.pending_requests()),
                "agent.thread_pool_size": str(self.pool.size),
                "agent.num_idle_threads": str(self.pool.idle())}
        gil = self.gil.average_us()
        if gil is not None:
            info["agent.gil_average_wait_time_us"] = f"{gil:.3f}"
        return info

    def autograd_debug_info(self) -> Dict[str, int]:
        """Live contexts and backward passes in flight here (both back to 0 after cleanup)."""
        return {"num_autograd_contexts": self.contexts.count(),
                "num_current_backward_passes": len(self.backward.in_flight())}

    def _barrier(self, name: str, end: float, waiting_in: str = "shutdown") -> None:
        remaining = max(0.01, end - time.monotonic())
        try:
            self.peers.coordinator.request(pb.Request(barrier=pb.Barrier(name=name)), timeout=remaining).result()
        except errors.DeadlineExceeded:
            raise RuntimeError(
                f"{waiting_in} timed out after {remaining:.3g} s at barrier '{name}': some workers "
                f"never called {waiting_in}; see `distautograd status`"
            ) from None

    def _close_everything(self) -> None:
        gone = errors.Unavailable(f"{self.name} is shut down")
        self.peers.close()
        coordinator_link = self.peers.coordinator
        if coordinator_link is not None:
            time.sleep(0.05)  # let the Leave reach the coordinator before the connection ends
            coordinator_link.close(gone)
        if self.coordinator is not None:
            self.coordinator.stop()
        if self.listener is not None:
            self.listener.close()
        if self.http is not None:
            self.http.close()
        if self.server is not None:
            self.server.stop(grace=0.5)
        if self._coordinator_channel is not None:
            self._coordinator_channel.close()
        self.pool.shutdown()
        self.rrefs.stop()
        self.deadlines.stop()

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.name, self.rank)


def validate_name(name: str) -> None:
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(problem)


def validate_rank(rank: int, world_size: Optional[int]) -> None:
    if rank > MAX_RANK:
        raise ValueError(f"rank {rank} is too large: ranks go up to {MAX_RANK}")
    if world_size is not None and rank >= world_size:
        raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
