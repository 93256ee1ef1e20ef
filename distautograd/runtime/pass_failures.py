"""How a backward pass fails: the root stops it everywhere and fails its caller naming the worker; a participant takes its part off.

A pass fails when a backward function raises (on any worker), a participant dies or leaves (the
world's departure notice, or the coordinator's abort of the passes it took part in), a connection
to a participant breaks, its context is released, or the time runs out. The root fails the
caller's future first (so exactly one error wins), then tells every other participant to stop;
a participant closes its part, so nothing more runs or is sent there.
"""

from __future__ import annotations

from typing import Callable

from distautograd import errors
from distautograd.ids import IdMint
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.pass_state import Drive, Part, Passes
from distautograd.runtime.peers import Peers


class PassFailures:
    def __init__(self, name: str, mint: IdMint, peers: Peers, passes: Passes, label: Callable[[int], str],
                 resolve_type: Callable):
        self.name = name
        self._mint = mint
        self._peers = peers
        self._passes = passes
        self._label = label
        self._resolve_type = resolve_type

    def fail(self, drive: Drive, error: BaseException) -> None:
        """The root's pass fails with ``error`` (the first error wins): its part here closes and every
        other participant is told to stop."""
        with drive.lock:
            if drive.result.done():
                return
            drive.result.set_exception(error)
        key = (drive.ctx.id, drive.pass_id)
        part = self._passes.part(key)
        if part is not None:
            self.close(part)
        abort = pb.Request(abort_backward=pb.AbortBackward(
            context_id=drive.ctx.id, pass_id=drive.pass_id, error=errors.to_proto(error, self.name)))
        for rank in drive.participants - {self._mint.rank}:
            try:
                self._peers.notify(rank, abort)
            except Exception:  # a participant that is gone has nothing to stop
                pass

    def close(self, part: Part) -> None:
        """Nothing more of ``part`` runs or is sent here."""
        with part.lock:
            part.closed = True
            local = part.local
        part.unwatch()
        if local is not None:
            local.close()

    def handle_abort(self, link, body: pb.AbortBackward, attachments) -> None:
        """The root says stop; or, at the root, the coordinator says a participant died."""
        key = (body.context_id, body.pass_id)
        drive = self._passes.drive(key)
        if drive is not None:
            self.fail(drive, errors.from_proto(body.error, self._resolve_type))
            return
        part = self._passes.end(key)
        if part is not None:
            self.close(part)

    def expire(self, drive: Drive, timeout: float) -> None:
        """The pass's time ran out: it fails naming the participants it still waits for."""
        with drive.lock:
            waiting = sorted(drive.waiting)
        names = ", ".join(self._label(rank) for rank in waiting) or "nobody"
        self.fail(drive, errors.DeadlineExceeded(
            f"the backward pass of context {drive.ctx.id} did not finish within {timeout:g} s; "
            f"still waiting for {names}"))

    def on_departed(self, departure: pb.Departure) -> None:
        """A worker left or died: passes it takes part in fail, passes it drives stop here."""
        drives = [d for d in self._passes.drives() if departure.rank in d.participants]
        parts = self._passes.of_root(departure.rank)
        how = "died" if departure.failed else "left"
        for drive in drives:
            self.fail(drive, errors.Unavailable(
                f"worker '{departure.name}' (rank {departure.rank}) {how} during the backward pass of context "
                f"{drive.ctx.id}: {departure.reason}", worker=departure.name))
        for part in parts:
            self.close(part)

    def on_peer_lost(self, rank: int, error: BaseException) -> None:
        """A connection to ``rank`` broke: gradients may have been lost with it, so the passes this
        worker drives that need it stop now, naming it (nothing it holds is released for this)."""
        for drive in self._passes.drives():
            if rank in drive.participants and rank != self._mint.rank:
                kind = errors.Unreachable if isinstance(error, errors.Unreachable) else errors.Unavailable
                self.fail(drive, kind(f"the backward pass of context {drive.ctx.id} lost {self._label(rank)}: "
                                      f"{error}", worker=self._peers.world.name_of(rank)))

    def context_released(self, context_id: int) -> None:
        """The parts of a released context's passes stop here."""
        for part in self._passes.of_context(context_id):
            self.close(part)

    def as_raised(self, drive: Drive, exc: BaseException) -> BaseException:
        """What the caller of backward gets: an exception a backward function raised, on any worker
        (this one too), becomes RuntimeError("Error on Node N: ...") as torch's, naming the worker,
        with the original as its cause; the runtime's own errors (a worker died, a timeout) are
        RuntimeErrors already."""
        if isinstance(exc, errors.RpcError):
            return exc
        worker = getattr(exc, "worker", None)
        if worker is None:  # raised by a backward function here, on the root
            worker, rank = self.name, self._mint.rank
        else:
            rank = self._peers.world.rank_of(worker)
        message, _, rest = str(exc).partition("\n\nRaised on ")
        raised = RuntimeError(
            f"Error on Node {rank}: {message}\n\n{type(exc).__name__} raised on worker '{worker}' (rank {rank}) "
            f"during the backward pass of context {drive.ctx.id}" + (f"; {rest}" if rest else ""))
        raised.__cause__ = exc
        return raised
