"""The driver of backward passes: it learns which send points the roots reach, starts the pass, and ends it.

From the graph summaries of the workers (which recv points each source reaches), it follows
gradient from the roots across workers: a recv point reached on one worker activates the send
point with the same message id on the worker that sent it, and so on. Only active send points
are waited on, so a send point the roots cannot reach never blocks a pass. Each active worker
gets its list; the pass ends when every one has reported, and any error or departure aborts it
everywhere and fails the caller with the worker and the cause.
"""

from __future__ import annotations

import logging
import threading
import functools
from concurrent.futures import Future
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple

from distautograd import errors
from distautograd.autograd.graph import ROOTS
from distautograd.ids import rank_of
from distautograd.protocol.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from distautograd.coordinator.service import Coordinator

log = logging.getLogger("distautograd")


class PassRecord:
    def __init__(self, body: pb.StartBackward, root: int):
        self.context_id = body.context_id
        self.pass_id = body.pass_id
        self.root = root
        self.retain_graph = body.retain_graph
        self.timeout = body.timeout or None
        self.summaries: Dict[int, pb.GraphSummary] = {root: body.summary}
        self.asking: Set[int] = set()
        self.running: Set[int] = set()
        self.waiting: Set[int] = set()
        self.leaves: Dict[int, List[int]] = {}
        self.result: Future = Future()
        self.lock = threading.Lock()

    @property
    def participants(self) -> Set[int]:
        return set(self.summaries) | self.running


def active_sources(summaries: Dict[int, pb.GraphSummary], root: int) -> Tuple[Set[Tuple[int, int]], Set[int]]:
    """The (rank, source) pairs gradient reaches from the roots, and ranks whose summary is still needed."""
    reach: Dict[Tuple[int, int], List[int]] = {}
    for rank, summary in summaries.items():
        for source in summary.sources:
            reach[(rank, source.message_id)] = list(source.reaches)
    active: Set[Tuple[int, int]] = set()
    needed: Set[int] = set()
    stack = [(root, ROOTS)]
    while stack:
        rank, key = stack.pop()
        if (rank, key) in active:
            continue
        active.add((rank, key))
        if rank not in summaries:
            needed.add(rank)
            continue
        for message_id in reach.get((rank, key), ()):
            stack.append((rank_of(message_id), message_id))
    return active, needed


class BackwardDriver:
    """Drives each pass by callbacks: a round advances from whichever thread delivers its last
    answer, so no thread waits per pass, however many run at once."""

    def __init__(self, coordinator: "Coordinator"):
        self.coordinator = coordinator
        self._passes: Dict[Tuple[int, int], PassRecord] = {}
        self._lock = threading.Lock()

    def in_flight(self, context_id: Optional[int] = None) -> int:
        with self._lock:
            return sum(1 for key in self._passes if context_id is None or key[0] == context_id)

    def start(self, root: int, body: pb.StartBackward) -> Future:
        record = PassRecord(body, root)
        with self._lock:
            self._passes[(record.context_id, record.pass_id)] = record
        self.coordinator.contexts.pass_began(record.context_id)
        self.coordinator.contexts.add_participants(record.context_id, [root, *body.summary.peers])
        if record.timeout:
            handle = self.coordinator.deadlines.schedule(record.timeout, lambda: self._expire(record))
            record.result.add_done_callback(lambda _: self.coordinator.deadlines.cancel(handle))
        self._advance(record)
        return record.result

    def _advance(self, record: PassRecord) -> None:
        """Asks for the summaries still needed, or, when there are none, starts the pass."""
        try:
            active, needed = active_sources(record.summaries, record.root)
            if needed:
                # Ask every participant heard of so far, not only the ones known to be needed: along
                # a chain, needed ones show up one hop at a time, and one round beats one per hop.
                known = {rank for summary in record.summaries.values() for rank in summary.peers}
                needed |= known - set(record.summaries)
                with record.lock:
                    record.asking = set(needed)
                request = pb.Request(
                    prepare_backward=pb.PrepareBackward(context_id=record.context_id, pass_id=record.pass_id)
                )
                for rank in needed:
                    self._member(record, rank).link.send_request(
                        request, (), record.timeout, functools.partial(self._summary, record, rank)
                    )
                return
            by_rank: Dict[int, List[int]] = {}
            for rank, key in active:
                by_rank.setdefault(rank, [])
                if key != ROOTS:
                    by_rank[rank].append(key)
            with record.lock:
                record.running = set(by_rank)
                record.waiting = set(by_rank)
            self.coordinator.contexts.add_participants(record.context_id, record.participants)
            self._run(record, by_rank)
        except BaseException as exc:
            self.fail(record, exc)

    def _summary(self, record: PassRecord, rank: int, response, attachments, error) -> None:
        if error is not None:
            self.fail(record, error)
            return
        with record.lock:
            record.summaries[rank] = response.graph_summary
            record.asking.discard(rank)
            complete = not record.asking
        if complete and not record.result.done():
            self._advance(record)

    def _member(self, record: PassRecord, rank: int):
        member = self.coordinator.membership.member(rank)
        if member is None:
            raise errors.Unavailable(
                f"{self.coordinator.membership.label(rank)} takes part in context {record.context_id} but has left"
            )
        return member

    def _run(self, record: PassRecord, by_rank: Dict[int, List[int]]) -> None:
        """Starts the pass everywhere, the root last so the others start first. No answer is awaited:
        each worker reports with PassFinished, errors included, and a departure fails the pass."""
        for rank in sorted(by_rank, key=lambda r: r == record.root):
            self._member(record, rank).link.notify(pb.Request(run_backward=pb.RunBackward(
                context_id=record.context_id,
                pass_id=record.pass_id,
                active_sends=sorted(by_rank[rank]),
                run_roots=rank == record.root,
                retain_graph=record.retain_graph,
            )))

    def finished(self, rank: int, body: pb.PassFinished) -> None:
        with self._lock:
            record = self._passes.get((body.context_id, body.pass_id))
        if record is None:
            return
        if body.HasField("error"):
            self.fail(record, errors.from_proto(body.error, self.coordinator.resolve_type))
            return
        with record.lock:
            record.waiting.discard(rank)
            record.leaves[rank] = list(body.leaves)
            complete = not record.waiting and bool(record.running)
        if complete:
            self._end(record)
            if not record.result.done():
                record.result.set_result(None)

    def fail(self, record: PassRecord, error: BaseException) -> None:
        if record.result.done():
            return
        self._end(record)
        log.info("backward pass %d of context %d failed: %s", record.pass_id, record.context_id, error)
        abort = pb.Request(abort_backward=pb.AbortBackward(
            context_id=record.context_id, pass_id=record.pass_id, reason=str(error)[:1000]
        ))
        for rank in record.participants:
            member = self.coordinator.membership.member(rank)
            if member is not None:
                member.link.notify(abort)
        if not record.result.done():
            record.result.set_exception(error)

    def _end(self, record: PassRecord) -> None:
        with self._lock:
            self._passes.pop((record.context_id, record.pass_id), None)
        self.coordinator.contexts.pass_ended(record.context_id, record.leaves)

    def _expire(self, record: PassRecord) -> None:
        with record.lock:
            waiting = sorted(record.waiting)
        names = ", ".join(self.coordinator.membership.label(r) for r in waiting) or "the graph summaries"
        self.fail(record, errors.DeadlineExceeded(
            f"the backward pass of context {record.context_id} did not finish within {record.timeout:g} s; "
            f"still waiting for {names}"
        ))

    def on_departed(self, departure: pb.Departure) -> None:
        with self._lock:
            records = [r for r in self._passes.values() if departure.rank in r.participants]
        how = "died" if departure.failed else "left"
        for record in records:
            self.fail(record, errors.Unavailable(
                f"worker '{departure.name}' (rank {departure.rank}) {how} during the backward pass of context "
                f"{record.context_id}: {departure.reason}",
                worker=departure.name,
            ))

    def stop(self) -> None:
        with self._lock:
            records = list(self._passes.values())
        for record in records:
            self.fail(record, errors.Unavailable("the coordinator is shutting down"))
