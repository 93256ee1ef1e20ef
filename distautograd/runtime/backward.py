"""The distributed backward pass as workers speak it: the root plans and drives, participants run their part and report.

The worker that calls ``backward`` (the root) knows from its own graph every send point the pass
will reach (engine.activations; where that did not travel with the tensors, it asks the senders).
So no round is needed before gradients move: the plan rides on the first gradients each worker
receives, every participant runs its part as gradients arrive (engine.local_pass), pushes the
gradients of its recv points straight to the workers that sent those tensors, and reports to the
root when its part is done. The pass ends when every participant has reported. Any error there,
a worker that dies (the root hears it from the coordinator), or the time running out, aborts the
pass everywhere and fails the caller naming the worker (runtime.pass_failures). The coordinator
hears of every pass's start and end, and aborts passes whose participants die.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from distautograd import errors, metrics, native
from distautograd.engine.roots import validate_roots
from distautograd.engine.graph import ROOTS
from distautograd.engine import local_pass, nodes, order
from distautograd.engine.local_pass import UnknownSource
from distautograd.engine.slots import Captured
from distautograd.ids import IdMint, rank_of
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.codec import Codec
from distautograd.runtime.contexts import Context, ContextStore
from distautograd.runtime.pass_failures import PassFailures
from distautograd.runtime.pass_state import Drive, Part, Passes, PassKey
from distautograd.runtime.push_sending import PLAN_INLINE_LIMIT, PushSending
from distautograd.runtime.peers import COORDINATOR, Peers
from distautograd.runtime.reach import Reach
from distautograd.runtime import anomaly, inspection, profiling, tracing
from distautograd.transport import hops, reading
from distautograd.transport.pushes import ArrivedPush, PartDone, done_as_protobuf, parts_done
from distautograd.views import trace
from distautograd.transport.deadlines import Deadlines

log = logging.getLogger("distautograd")

BACKWARD_NAME = "torch::distributed::autograd::backward"  # torch's name for a distributed backward's range


def _plan_of(body: "pb.PushGradients | ArrivedPush") -> Optional[Tuple[pb.PassPlan, Optional[bytes]]]:
    """The plan a push carries and, where the core read it, its bytes as they came; or None (the root
    sent, or will send, RunBackward)."""
    if isinstance(body, ArrivedPush):
        plan = body.plan()
        return None if plan is None else (plan, body.plan_bytes)
    return (body.plan, None) if body.HasField("plan") else None


class Backward:
    def __init__(
        self,
        name: str,
        mint: IdMint,
        peers: Peers,
        contexts: ContextStore,
        codec: Codec,
        deadlines: Deadlines,
        label: Callable[[int], str],
        timeout: Callable[[], Optional[float]],
        resolve_type: Callable,
    ):
        self.name = name
        self._mint = mint
        self._peers = peers
        self._contexts = contexts
        self._codec = codec
        self._deadlines = deadlines
        self._timeout = timeout
        self._resolve_type = resolve_type
        self._reach = Reach(mint, peers, contexts, timeout)
        self.handle_reach = self._reach.handle_reach
        # pushes the core reads go straight to the protocol, and into a part the core runs (native/csrc/push_lane.h)
        lane = native.core.PushLane(self.take_decoded_push, reading.lend, reading.reclaim, hops,
                                    codec.max_message_bytes) if native.path_on() else None
        self._passes = Passes(lambda: mint.rank, lane)
        self.push_lane = lane  # for the links from peers
        self.failures = PassFailures(name, mint, peers, self._passes, label, resolve_type)
        self._pushes = PushSending(mint, peers, codec)
        contexts.on_release.append(self.failures.context_released)

    @property
    def rank(self) -> int:
        return self._mint.rank

    def in_flight(self) -> List[Tuple[int, int, int]]:
        """(context id, pass id, root's rank) of every pass going on here, driven or taken part in."""
        return self._passes.in_flight()

    # ------------------------------------------------------------------ the root

    def backward(self, ctx: Context, roots: Sequence[torch.Tensor], retain_graph: bool = False,
                 create_graph: bool = False, grads: Optional[Sequence[torch.Tensor]] = None,
                 capture: bool = False) -> Optional[Captured]:
        """Runs a pass from ``roots`` in ``ctx``; returns when it is done everywhere. ``grads``: the
        roots' gradients (ones, for scalars, if not given). ``capture``: leaves hand their gradients
        back instead of accumulating them; returns those of this worker's leaves."""
        began = trace.now_us() if tracing.on(ctx) else 0.0
        called = time.monotonic()
        roots = validate_roots(roots, scalars=grads is None)
        grads = list(grads) if grads is not None else [
            torch.ones_like(root, memory_format=torch.contiguous_format) for root in roots]
        edges = [nodes.gradient_edge(root) for root in roots]
        order.place(edge.node for edge in edges)  # made on this thread: their places before any sum
        if metrics.ON:
            metrics.PASSES_STARTED.inc()
        try:
            active = self._reach.active_sends(ctx, edges)
        except BaseException as exc:  # it could not start: a holder did not answer, or answered wrong
            if metrics.ON:
                metrics.PASSES_ENDED.labels(metrics.outcome(exc)).inc()
            raise
        pass_id = self._mint()
        key = (ctx.id, pass_id)
        plan = pb.PassPlan(root=self.rank, active_sends=sorted(active), retain_graph=retain_graph,
                           create_graph=create_graph, anomaly=anomaly.requested(ctx.anomaly), capture=capture,
                           inspect=ctx.inspect)
        participants = {rank_of(m) for m in active} - {self.rank}
        # Under torch's profiler the pass runs here on the caller's thread, the one the profiler records
        # (torch's engine carries the caller's thread state to its threads; Python cannot).
        profiled = profiling.on()
        drive = Drive(ctx, pass_id, participants | {self.rank}, queue.SimpleQueue() if profiled else None)
        part = Part(ctx, pass_id, self.rank)
        self._passes.begin(drive, part)
        if metrics.ON:
            metrics.PASS_PARTICIPANTS.observe(len(drive.participants))
        ctx.reported = True
        with ctx.lock:
            ctx.peers.update(participants)  # released on them when the context ends
            ctx.crossed.update(drive.participants)
        self._tell_coordinator(pb.PassEvent(context_id=ctx.id, pass_id=pass_id,
                                            participants=sorted(drive.participants)))
        timeout = self._timeout()
        expiry = self._deadlines.schedule(timeout, lambda: self.failures.expire(drive, timeout)) if timeout else None
        try:
            with torch.autograd.profiler.record_function(BACKWARD_NAME) if profiled else contextlib.nullcontext():
                if len(active) > PLAN_INLINE_LIMIT:
                    run = pb.Request(run_backward=pb.RunBackward(context_id=ctx.id, pass_id=pass_id, plan=plan))
                    for rank in participants:
                        self._peers.notify(rank, run)
                self._start_part(part, plan, roots_edges=edges, root_grads=grads, lane=drive.inbox is None)
                reading.before_blocking()
                if drive.inbox is not None:
                    self._run_arrivals(drive, part)
                drive.result.result()
            return part.captured
        except BaseException as exc:
            self.failures.fail(drive, exc)
            if not isinstance(exc, Exception):
                raise  # Ctrl-C, SystemExit: the pass stops everywhere and they go on as they are
            raised = self.failures.as_raised(drive, exc)
            raise raised from raised.__cause__
        finally:
            if expiry is not None:
                self._deadlines.cancel(expiry)
            if began:
                tracing.root_pass(ctx, began, len(drive.participants))
            if metrics.ON:
                metrics.PASSES_ENDED.labels(metrics.outcome(drive.result.exception())).inc()
                metrics.PASS_SECONDS.observe(time.monotonic() - called)
            self._passes.end(key, driven=True)
            self._tell_coordinator(pb.PassEvent(context_id=ctx.id, pass_id=pass_id, ended=True,
                                                failed=drive.result.exception() is not None, leaves=drive.leaves))

    # ------------------------------------------------------------------ every participant

    def _start_part(self, part: Part, plan: pb.PassPlan, roots_edges=(), root_grads=(),
                    plan_bytes: Optional[bytes] = None, lane: bool = True) -> None:
        """Plans this worker's part once the plan is known, and feeds it what already arrived.
        ``plan_bytes``: the plan serialized, where it came so (it rides along with this part's pushes);
        ``lane``: pushes the core reads may run straight into the part (not where the root's caller
        runs them, under torch's profiler)."""
        points = {m: self._contexts.send_point(m) for m in plan.active_sends if rank_of(m) == self.rank}
        sources: Dict[int, list] = {m: [point.edge] for m, point in points.items()}
        keys = {m: point.key for m, point in points.items()}
        if roots_edges:
            sources[ROOTS] = list(roots_edges)
        part.captured = Captured() if plan.capture else None
        local = local_pass.start(
            sources, keys, part.captured if plan.capture else part.ctx.store,
            send=lambda grads, last: self._pushes.push(part, grads, last),
            finish=lambda error: self._part_finished(part, error),
            retain_graph=plan.retain_graph, create_graph=plan.create_graph,
            observe=tracing.waves(part.ctx, self.name) if plan.inspect & inspection.TRACE else None,
        )
        with part.lock:
            if part.closed or part.local is not None:
                return
            part.plan = plan
            part.plan_bytes = plan_bytes if plan_bytes is not None else plan.SerializeToString()
            part.active = frozenset(plan.active_sends)
            part.local = local
            part.watches = anomaly.watch(local.order, plan.anomaly, self.name) if plan.anomaly else []
            part.ctx.passes += 1
            part.ctx.inspect |= plan.inspect
            if plan.inspect & inspection.GRAPH:
                part.watches += inspection.watch_runs(part.ctx, local.order)
            early, part.early = part.early, []
            if lane and self._passes.lane is not None and not tracing.on(part.ctx) \
                    and isinstance(local, native.core.LocalPass):
                self._passes.lane.add(part.ctx.id, part.pass_id, local, lambda done: self._learn_done(
                    part, parts_done(done)), lambda error: self._lane_failed(part, error))
        if hops.ON:
            hops.at("started")  # (a part a push started: the bench's hop breakdown; the root's is no hop)
        local.start_if_empty()
        if root_grads:
            local.arrive(ROOTS, list(root_grads))
        for message_id, grad in early:
            local.arrive(message_id, [grad])

    def _part(self, context_id: int, pass_id: int, root: int, src: int) -> Optional[Part]:
        """This worker's part of a pass, made when the first message of the pass arrives; None once the
        pass ended here (finished or aborted): what still arrives for it is dropped."""
        if not context_id:
            raise errors.InvalidArgument("a backward message must name its distributed autograd context")

        def make() -> Part:
            if root == self.rank:  # the root makes its part before anyone hears of the pass
                raise errors.InvalidArgument(f"{self.name} drives no backward pass {pass_id} of context {context_id}")
            return Part(self._contexts.for_incoming(context_id, src), pass_id, root)

        return self._passes.join((context_id, pass_id), make)

    def _joined(self, context_id: int, pass_id: int, root: int, src: int) -> Optional[Part]:
        """``_part``, for a message a peer sent: where this worker cannot take part (its context was
        released here, or the peer has no share left for another), the root hears it at once and the
        pass fails naming this worker, as torch's fails when a worker no longer knows the context,
        rather than waiting for its timeout."""
        try:
            return self._part(context_id, pass_id, root, src)
        except errors.RpcError as exc:
            if root != self.rank and context_id:
                finished = pb.PassFinished(context_id=context_id, pass_id=pass_id, error=errors.to_proto(exc, self.name))
                try:
                    self._peers.notify(root, pb.Request(pass_finished=finished))
                except Exception as lost:  # the root is gone: nobody waits for this pass
                    log.debug("could not report pass %d to rank %d: %s", pass_id, root, lost)  # pragma: no mutate
            raise

    def _run_arrivals(self, drive: Drive, part: Part) -> None:
        """The caller's thread runs the pushes to its part as they come, until the pass ends."""
        drive.result.add_done_callback(lambda _: drive.inbox.put(None))
        while True:
            arrived = drive.inbox.get()
            if arrived is None:
                return
            self._take_push(part, *arrived)

    def handle_push(self, link, body: "pb.PushGradients | ArrivedPush", attachments) -> None:
        """Runs what the gradients complete, on the thread that read them; should a backward
        function wait for another worker, or run long, reading goes on elsewhere (transport.reading)."""
        role = reading.lend()
        try:
            part = self._joined(body.context_id, body.pass_id, body.root, link.peer_rank)
            if part is None:
                return  # its pass ended here
            drive = self._passes.drive((body.context_id, body.pass_id)) if part.root == self.rank else None
            if drive is not None and drive.inbox is not None:
                drive.inbox.put((link, body, attachments))  # the caller's thread runs it
                return
            if tracing.on(part.ctx) and body.message_ids:
                src = self._peers.world.name_of(link.peer_rank)
                with tracing.push_arriving(part.ctx, body.message_ids[0], src):
                    self._take_push(part, link, body, attachments)
            else:
                self._take_push(part, link, body, attachments)
        finally:
            if role is not None:
                reading.reclaim(role)

    def _take_push(self, part: Part, link, body: "pb.PushGradients | ArrivedPush", attachments) -> None:
        if profiling.on():  # as torch's profile shows a send point's work: one range per message
            with torch.autograd.profiler.record_function(nodes.SEND_NAME):
                self._take_push_now(part, link, body, attachments)
            return
        self._take_push_now(part, link, body, attachments)

    def take_decoded_push(self, src: int, context_id: int, pass_id: int, root: int, message_ids: List[int],
                          done: List[Tuple[int, int]], plan_bytes: Optional[bytes], grads: list) -> bool:
        """A push the core read and decoded (native/csrc/push_lane.h) for a part it does not run itself:
        run as ``handle_push`` runs one; False to leave it to ``handle_push`` (where the root's caller
        runs its part's pushes, or the context is traced). Its failures are said here, as the dispatcher
        says a notification's."""
        try:
            self._peers.await_join()
            part = self._joined(context_id, pass_id, root, src)
            if part is None:
                return True  # its pass ended here
            drive = self._passes.drive((context_id, pass_id)) if part.root == self.rank else None
            if (drive is not None and drive.inbox is not None) or tracing.on(part.ctx):
                return False
            role = reading.lend()
            try:
                if done:
                    self._learn_done(part, parts_done(done))
                self._arrive(part, message_ids, grads, lambda: None if plan_bytes is None else (
                    pb.PassPlan.FromString(plan_bytes), plan_bytes))
            finally:
                if role is not None:
                    reading.reclaim(role)
        except Exception as exc:
            log.warning("push from rank %d failed: %s", src, exc)
        return True

    def _take_push_now(self, part: Part, link, body: "pb.PushGradients | ArrivedPush", attachments) -> None:
        if body.done:
            self._learn_done(part, body.done)
        try:
            grads = self._codec.decode(body.gradients, attachments, link.peer_rank, part.ctx)
            if hops.ON and body.message_ids:
                hops.received((part.ctx.id, part.pass_id, body.message_ids[0]))
            if not isinstance(grads, list) or len(grads) != len(body.message_ids) or not all(
                    g is None or isinstance(g, torch.Tensor) for g in grads):
                raise errors.InvalidArgument("gradients must be a list of tensors (or None), one per message id")
        except BaseException as exc:
            self._part_finished(part, exc)
            raise
        self._arrive(part, body.message_ids, grads, lambda: _plan_of(body))

    def _arrive(self, part: Part, message_ids: List[int], grads: list,
                plan: Callable[[], Optional[Tuple[pb.PassPlan, Optional[bytes]]]]) -> None:
        """A push's gradients reach the part; ``plan()``: the plan it carries (see ``_plan_of``), to
        start the part where it has not started."""
        with part.lock:
            if part.closed:
                return
            local = part.local
            if local is None:
                part.early.extend(zip(message_ids, grads))
        try:
            plan = None if local is not None else plan()
            if plan is not None:
                self._start_part(part, plan[0], plan_bytes=plan[1])
            elif local is not None:
                for message_id, grad in zip(message_ids, grads):
                    local.arrive(message_id, [grad])
        except UnknownSource as exc:  # the pass cannot complete: it fails now, not at its timeout
            self._part_finished(part, errors.InvalidArgument(str(exc)))
            raise errors.InvalidArgument(str(exc)) from None

    def _lane_failed(self, part: Part, error: BaseException) -> None:
        """What a push the core ran into ``part`` raised there (native/csrc/push_lane.h): handled as
        ``_take_push_now`` and the dispatcher handle it on the Python path."""
        if part.closed:
            return  # what arrives after the part ended is dropped
        if isinstance(error, UnknownSource):  # the pass cannot complete: it fails now, not at its timeout
            error = errors.InvalidArgument(str(error))
            self._part_finished(part, error)
        log.warning("push to pass %d of context %d failed: %s", part.pass_id, part.ctx.id, error)

    def handle_run(self, link, body: pb.RunBackward, attachments) -> None:
        part = self._joined(body.context_id, body.pass_id, body.plan.root, link.peer_rank)
        if part is not None:
            self._start_part(part, body.plan)

    def _learn_done(self, part: Part, done) -> None:
        """Parts a push says are done: the root counts them, anyone else passes them on."""
        if part.root == self.rank:
            for entry in done:
                self._report((part.ctx.id, part.pass_id), entry.rank, None, entry.leaves)
            return
        with part.lock:
            part.learned.extend(PartDone(entry.rank, entry.leaves) for entry in done)

    def _part_finished(self, part: Part, error: Optional[BaseException]) -> None:
        with part.lock:
            if part.closed:
                return
            part.closed = True
        part.unwatch()
        key = (part.ctx.id, part.pass_id)
        leaves = part.local.leaves_reached if part.local is not None else 0
        if error is not None:
            log.info("backward pass %d of context %d failed on %s: %s", part.pass_id, part.ctx.id, self.name, error)
        if part.root == self.rank:
            self._report(key, self.rank, error, leaves)
            return
        self._passes.end(key)
        with part.lock:
            learned, part.learned = part.learned, []
        if part.told and error is None and not learned:
            return  # its last push said so
        finished = pb.PassFinished(context_id=part.ctx.id, pass_id=part.pass_id, leaves=leaves,
                                   done=done_as_protobuf(learned))
        if part.told and error is None:  # only what it learned after its last push: rare, but not lost
            finished = pb.PassFinished(context_id=part.ctx.id, pass_id=part.pass_id, done=done_as_protobuf(learned))
        if error is not None:
            finished.error.CopyFrom(errors.to_proto(error, self.name))
        try:
            self._peers.notify(part.root, pb.Request(pass_finished=finished))
        except Exception as exc:  # the root is gone: nobody waits for this pass
            log.debug("could not report pass %d to rank %d: %s", part.pass_id, part.root, exc)  # pragma: no mutate

    def handle_finished(self, link, body: pb.PassFinished, attachments) -> None:
        error = errors.from_proto(body.error, self._resolve_type) if body.HasField("error") else None
        key = (body.context_id, body.pass_id)
        for entry in body.done:
            self._report(key, entry.rank, None, entry.leaves)
        self._report(key, link.peer_rank, error, body.leaves)

    def _report(self, key: PassKey, rank: int, error: Optional[BaseException], leaves: int) -> None:
        drive = self._passes.drive(key)
        if drive is None:
            return
        if error is not None:
            self.failures.fail(drive, error)
            return
        with drive.lock:
            drive.waiting.discard(rank)
            if leaves:
                drive.leaves[rank] = leaves
            done = not drive.waiting
        if done and not drive.result.done():
            drive.result.set_result(None)

    def _tell_coordinator(self, event: pb.PassEvent) -> None:
        try:
            self._peers.notify(COORDINATOR, pb.Request(pass_event=event))
        except Exception as exc:  # the coordinator only keeps records; the pass does not depend on it
            log.debug("could not tell the coordinator about pass %d: %s", event.pass_id, exc)  # pragma: no mutate
