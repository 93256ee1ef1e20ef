"""One worker's part of a backward pass: gather each boundary's gradients, run its segment once, pass results on.

The coordinator tells this worker which of its sources take part in a pass (``run``). Gradients
then arrive from local segments and from other workers (``handle_push``); a boundary runs as
soon as its last expected contribution is in. Leaf gradients of the pass are summed and added
to the context at the end; recv points send theirs back to the worker that sent the tensor.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.autograd.graph import GradientEdge

from distautograd import errors
from distautograd.autograd.contexts import Context
from distautograd.autograd import segments
from distautograd.autograd.graph import ROOTS, LocalGraph, Plan, Segment
from distautograd.autograd.segments import Grads, add, total
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.encoding import tensors

if TYPE_CHECKING:
    from distautograd.runtime.agent import Agent

log = logging.getLogger("distautograd")
PUSH_RETRIES = 2
# Where several gradients meet, they are summed in one fixed order, whatever order they arrive in,
# so results are reproducible and match torch's: root gradients, then local producers latest-created
# first, then gradients from other workers latest-sent first.
_ROOT_ORDER = (2, 0)


def _local_order(sequence_nr: int) -> tuple:
    return (1, sequence_nr)


def _remote_order(message_id: int) -> tuple:
    return (0, message_id)


class PassState:
    """What one pass needs on this worker, from preparation to the end."""

    def __init__(self, ctx: Context, pass_id: int):
        self.ctx = ctx
        self.pass_id = pass_id
        self.lock = threading.Lock()
        self.graph: Optional[LocalGraph] = None
        self.plan: Optional[Plan] = None
        self.root_grads: List[Tuple[GradientEdge, torch.Tensor]] = []
        self.retain_graph = False
        self.waiting: Dict[object, int] = {}
        self.buffers: Dict[object, Dict[int, list]] = {}  # boundary -> slot -> [(order, gradient)]
        self.early: Dict[int, Optional[torch.Tensor]] = {}  # pushes that came before the plan
        self.received: set = set()
        self.remaining = 0
        self.leaf_grads: Dict[torch.Tensor, torch.Tensor] = {}
        self.finished = False
        # called once at the end: (error or None, ids of the leaves that got gradients)
        self.report: Optional[Callable[[Optional[BaseException], List[int]], None]] = None


class BackwardEngine:
    def __init__(self, agent: "Agent"):
        self.agent = agent
        self._passes: Dict[Tuple[int, int], PassState] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ bookkeeping

    def _state(self, ctx: Context, pass_id: int) -> PassState:
        with self._lock:
            state = self._passes.get((ctx.id, pass_id))
            if state is None:
                state = self._passes[(ctx.id, pass_id)] = PassState(ctx, pass_id)
            return state

    def _existing(self, context_id: int, pass_id: int) -> Optional[PassState]:
        with self._lock:
            return self._passes.get((context_id, pass_id))

    def _forget(self, state: PassState) -> None:
        with self._lock:
            self._passes.pop((state.ctx.id, state.pass_id), None)

    def drop_context(self, context_id: int) -> None:
        with self._lock:
            for key in [k for k in self._passes if k[0] == context_id]:
                self._passes.pop(key).finished = True

    def passes_in_flight(self) -> int:
        with self._lock:
            return len(self._passes)

    # ------------------------------------------------------------------ the caller's side

    def backward(self, ctx: Context, roots: Sequence[torch.Tensor], retain_graph: bool) -> None:
        """Runs a pass from ``roots``; through the coordinator when gradient reaches another worker."""
        roots = validate_roots(roots)
        pass_id = self.agent.mint()
        summary = self.prepare(ctx, pass_id, roots)
        timeout = self.agent.default_timeout()
        reaches_out = any(s.reaches for s in summary.sources if s.message_id == ROOTS)
        if not reaches_out:
            done: Future = Future()

            def report(error: Optional[BaseException], leaves: List[int]) -> None:
                done.set_exception(error) if error is not None else done.set_result(None)

            self.run(ctx, pass_id, (), True, retain_graph, report)
            done.result()
            return
        start = pb.StartBackward(
            context_id=ctx.id, pass_id=pass_id, retain_graph=retain_graph, summary=summary, timeout=timeout or 0
        )
        ctx.coordinated = True
        try:
            # the coordinator enforces the pass timeout and says who is late; this one is a backstop
            self.agent.coordinator_request(
                pb.Request(start_backward=start), timeout + 5 if timeout else None
            ).result()
        finally:
            with self._lock:
                leftover = self._passes.pop((ctx.id, pass_id), None)
            if leftover is not None:
                leftover.finished = True

    # ------------------------------------------------------------------ preparing

    def prepare(self, ctx: Context, pass_id: int, roots: Sequence[torch.Tensor] = ()) -> pb.GraphSummary:
        """Builds this worker's graph for the pass and says what each source reaches."""
        state = self._state(ctx, pass_id)
        with ctx.lock:
            sources = {key: [point.edge] for key, point in ctx.send_points.items()}
            recv_nodes = {point.node: key for key, point in ctx.recv_points.items()}
            peers = sorted(ctx.peers | ctx.known)
        if roots:
            sources[ROOTS] = [torch.autograd.graph.get_gradient_edge(r) for r in roots]
            state.root_grads = [(edge, torch.ones_like(r)) for edge, r in zip(sources[ROOTS], roots)]
        state.graph = LocalGraph(sources, recv_nodes)
        summary = pb.GraphSummary(peers=peers)
        for key in sources:
            summary.sources.add(message_id=key, reaches=state.graph.reaches(key))
        return summary

    def handle_prepare(self, link, body: pb.PrepareBackward, attachments) -> pb.Response:
        ctx = self.agent.contexts.get(body.context_id)
        return pb.Response(graph_summary=self.prepare(ctx, body.pass_id))

    # ------------------------------------------------------------------ running

    def run(
        self,
        ctx: Context,
        pass_id: int,
        active_sends: Sequence[int],
        run_roots: bool,
        retain_graph: bool,
        report: Callable[[Optional[BaseException], List[int]], None],
        hand_off: bool = False,
    ) -> None:
        """Starts this worker's part of a prepared pass; ``report`` is called once at the end.
        With ``hand_off``, segments that compute run on the worker threads, not in this one."""
        state = self._state(ctx, pass_id)
        if state.graph is None:
            raise errors.FailedPrecondition(f"pass {pass_id} of context {ctx.id} was never prepared here")
        active = list(active_sends) + ([ROOTS] if run_roots else [])
        plan = state.graph.plan(active)
        ready: List[Segment] = []
        with state.lock:
            state.plan = plan
            state.retain_graph = retain_graph
            state.report = report
            state.remaining = len(plan.segments)
            state.waiting = {node: seg.expected for node, seg in plan.segments.items()}
            if run_roots:
                by_node: Dict[object, Grads] = {}
                for edge, grad in state.root_grads:
                    add(by_node.setdefault(edge.node, {}), edge.output_nr, grad)
                for node, grads in by_node.items():
                    self._contribute_locked(state, node, grads, _ROOT_ORDER, ready)
            early, state.early = state.early, {}
            for message_id, grad in early.items():
                self._deliver_push_locked(state, message_id, grad, ready)
            finished = self._maybe_finish_locked(state)
        if finished:
            self._complete(state)
        elif ready:
            self._drive_or_hand_off(state, ready, hand_off)

    def _drive_or_hand_off(self, state: PassState, ready: List[Segment], hand_off: bool) -> None:
        if not hand_off or all(segment.kind != "node" for segment in ready):
            self._drive(state, ready)  # nothing to compute, or this thread may: no hand-off
        else:
            self.agent.submit(self._drive, state, ready)

    def handle_run(self, link, body: pb.RunBackward, attachments) -> None:
        """Runs this worker's part; Run is a notification, so the outcome goes back as PassFinished."""

        def report(error: Optional[BaseException], leaves: List[int]) -> None:
            finished = pb.PassFinished(context_id=body.context_id, pass_id=body.pass_id, leaves=leaves)
            if error is not None:
                finished.error.CopyFrom(errors.to_proto(error, self.agent.name))
            self.agent.coordinator_notify(pb.Request(pass_finished=finished))

        try:
            ctx = self.agent.contexts.get(body.context_id)
            self.run(ctx, body.pass_id, body.active_sends, body.run_roots, body.retain_graph, report, hand_off=True)
        except BaseException as exc:
            report(exc, [])

    def handle_abort(self, link, body: pb.AbortBackward, attachments) -> None:
        state = self._existing(body.context_id, body.pass_id)
        if state is not None:
            with state.lock:
                state.finished = True
            self._forget(state)

    def handle_push(self, link, body: pb.PushGradients, attachments) -> None:
        try:
            ctx = self.agent.contexts.get(body.context_id)
        except RuntimeError:
            raise errors.FailedPrecondition(
                f"gradients arrived for context {body.context_id}, which {self.agent.name} no longer has"
            ) from None
        grads = [(g.message_id, _gradient(g, attachments)) for g in body.gradients]
        state = self._state(ctx, body.pass_id)
        ready: List[Segment] = []
        with state.lock:
            if state.finished:
                return
            for message_id, grad in grads:
                if message_id in state.received:
                    continue  # a retried push: it already counted
                state.received.add(message_id)
                if state.plan is None:
                    state.early[message_id] = grad
                else:
                    self._deliver_push_locked(state, message_id, grad, ready)
        if ready:
            self._drive_or_hand_off(state, ready, hand_off=True)

    def _deliver_push_locked(self, state: PassState, message_id: int, grad, ready: List[Segment]) -> None:
        point = state.ctx.send_points.get(message_id)
        if point is None:
            raise errors.InvalidArgument(f"no send point {message_id} in context {state.ctx.id}")
        self._contribute_locked(state, point.edge.node, {point.edge.output_nr: grad}, _remote_order(message_id), ready)

    def _contribute_locked(self, state: PassState, node, grads: Grads, order: tuple, ready: List[Segment]) -> None:
        segment = state.plan.segments.get(node)
        if segment is None:
            return  # not reachable in this pass
        buffer = state.buffers.setdefault(node, {})
        for slot, grad in grads.items():
            if grad is not None:
                buffer.setdefault(slot, []).append((order, grad))
        state.waiting[node] -= 1
        if state.waiting[node] == 0:
            ready.append(segment)

    # ------------------------------------------------------------------ executing

    def _drive(self, state: PassState, ready: List[Segment]) -> None:
        """Runs ready segments (and whatever they make ready) in this thread."""
        pushes: Dict[int, List[Tuple[int, Optional[torch.Tensor]]]] = {}
        try:
            while ready:
                segment = ready.pop(_next(ready))
                with state.lock:
                    if state.finished:
                        return
                    grads = {slot: total(parts) for slot, parts in state.buffers.pop(segment.boundary, {}).items()}
                if segment.kind == "leaf":
                    outputs = {}
                    grad = grads.get(0)
                    if grad is not None:
                        with state.lock:
                            state.leaf_grads[segment.boundary.variable] = grad
                elif segment.kind == "recv":
                    outputs = {}
                    src = state.ctx.recv_points[segment.message_id].src
                    pushes.setdefault(src, []).append((segment.message_id, grads.get(0)))
                else:
                    outputs = segments.run(segment, grads, state.retain_graph)
                with state.lock:
                    if state.finished:
                        return
                    for child in segment.frontier:
                        order = _local_order(segment.order[child])
                        self._contribute_locked(state, child, outputs.get(child, {}), order, ready)
                    state.remaining -= 1
                    # Batch gradients for other workers only while what is left here is cheap: a
                    # segment that computes would hold them back from a worker that could start now.
                    flush = bool(pushes) and not any(s.kind == "node" for s in ready)
                    finished = not flush and self._maybe_finish_locked(state)
                if flush:
                    self._send_pushes(state, pushes)
                    pushes = {}
                    with state.lock:
                        finished = self._maybe_finish_locked(state)
                if finished:
                    self._complete(state)
        except BaseException as exc:
            self._fail(state, exc)

    def _send_pushes(self, state: PassState, pushes: Dict[int, List[Tuple[int, Optional[torch.Tensor]]]]) -> None:
        for dest, grads in pushes.items():
            body = pb.PushGradients(context_id=state.ctx.id, pass_id=state.pass_id)
            attachments: list = []
            for message_id, grad in grads:
                gradient = body.gradients.add(message_id=message_id)
                if grad is None:
                    gradient.none = True
                elif not grad.any():
                    gradient.zeros = True  # e.g. behind a ReLU that was off: a shape, not a tensor of zeros
                    gradient.tensor.CopyFrom(pb.TensorMeta(dtype=tensors.dtype_name(grad.dtype), shape=grad.shape))
                else:
                    gradient.tensor.CopyFrom(tensors.encode(grad, attachments))
            self._push(state, dest, body, attachments, PUSH_RETRIES)

    def _push(self, state: PassState, dest: int, body: pb.PushGradients, attachments: list, retries: int) -> None:
        """Sends gradients as a notification: the pass completes when every worker reports, and the
        receiver cannot report before it has them, so no acknowledgement is needed. A push that
        cannot be sent is retried on a fresh connection; the receiver drops duplicates."""
        request = pb.Request(push_gradients=body)
        while True:
            try:
                self.agent.send_now(dest, request, attachments)
                return
            except errors.Unavailable as exc:
                if not retries or self.agent.world.entry(dest) is None:
                    self._fail(state, exc)
                    return
                retries -= 1
            except BaseException as exc:
                self._fail(state, exc)
                return

    # ------------------------------------------------------------------ ending

    def _maybe_finish_locked(self, state: PassState) -> bool:
        """Marks the pass finished when nothing is left to run or acknowledge; the caller then
        calls _complete outside the lock."""
        if state.finished or state.remaining or state.plan is None:
            return False
        state.finished = True
        return True

    def _complete(self, state: PassState) -> None:
        state.ctx.accumulate(state.leaf_grads)
        self._forget(state)
        if state.report is not None:
            state.report(None, [id(leaf) for leaf in state.leaf_grads])

    def _fail(self, state: PassState, error: BaseException) -> None:
        with state.lock:
            if state.finished:
                return
            state.finished = True
        self._forget(state)
        log.info("backward pass %d of context %d failed on %s: %s", state.pass_id, state.ctx.id, self.agent.name, error)
        if state.report is not None:
            state.report(error, [])


def _gradient(gradient: pb.Gradient, attachments) -> Optional[torch.Tensor]:
    if gradient.none:
        return None
    if gradient.zeros:
        return torch.zeros(list(gradient.tensor.shape), dtype=tensors.dtype_from_name(gradient.tensor.dtype))
    return tensors.decode(gradient.tensor, attachments)


def _next(ready: List[Segment]) -> int:
    """Which ready segment to run first: one that forwards gradient to another worker, so that
    worker can start, else the latest made ready (depth first, as torch's engine)."""
    for index in range(len(ready) - 1, -1, -1):
        if ready[index].kind == "recv":
            return index
    return len(ready) - 1


def validate_roots(roots: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    roots = list(roots)
    if not roots:
        raise RuntimeError("backward needs at least one root tensor")
    for i, root in enumerate(roots):
        if not isinstance(root, torch.Tensor):
            raise TypeError(f"roots must be tensors; element {i} is {type(root).__name__}")
        if not root.requires_grad:
            raise RuntimeError(f"element {i} of tensors does not require grad and does not have a grad_fn")
        if root.numel() != 1:
            raise RuntimeError(
                f"grad can be implicitly created only for scalar outputs: root {i} has shape {tuple(root.shape)}"
            )
    return roots
