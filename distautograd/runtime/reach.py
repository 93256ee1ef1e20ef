"""Which send points a backward pass reaches: what travelled with the tensors, and asking the holders of the rest.

The activations of a send point (engine.activations) usually travel with the tensor, so the root
knows the whole set from its own graph. Where they were too many to travel, the root asks the
workers that hold those send points, round after round, until nothing is unknown.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Callable, Dict, List, Optional, Set

from distautograd import errors
from distautograd.engine import activations
from distautograd.ids import IdMint, rank_of
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.contexts import Context, ContextStore
from distautograd.runtime.peers import Peers


class Reach:
    def __init__(self, mint: IdMint, peers: Peers, contexts: ContextStore, timeout: Callable[[], Optional[float]]):
        self._mint = mint
        self._peers = peers
        self._contexts = contexts
        self._timeout = timeout

    @property
    def rank(self) -> int:
        return self._mint.rank

    def active_sends(self, ctx: Context, edges) -> Set[int]:
        """Every send point the pass reaches; asks the workers that hold those whose activations did not travel."""
        found = activations.union(ctx.activations.of(edge.node, edge.output_nr) for edge in edges)
        try:
            return activations.reached(found, lambda ids: self._ask(ctx.id, ids))
        except errors.RpcError as exc:  # a holder timed out, is gone, or answered wrong: said as what it is
            raise type(exc)(f"the backward pass of context {ctx.id} cannot start: {exc}", worker=exc.worker) from None

    def _ask(self, context_id: int, ids: List[int]) -> List[tuple]:
        """(activates, unknown) for each of ``ids``, asked of their holders at once."""
        by_rank: Dict[int, List[int]] = {}
        for message_id in ids:
            by_rank.setdefault(rank_of(message_id), []).append(message_id)
        futures = [self._reach(context_id, rank, held) for rank, held in by_rank.items()]
        return [(reach.activates, reach.unknown) for future in futures for reach in future.result()]

    def _reach(self, context_id: int, rank: int, ids: List[int]) -> Future:
        result: Future = Future()
        if rank == self.rank:
            result.set_result(self._describe_reach(context_id, ids))
            return result
        request = pb.Request(reach=pb.ReachRequest(context_id=context_id, message_ids=ids))

        def done(response, attachments, error) -> None:
            if error is None:
                reaches = list(response.reach.reaches)
                answered = [reach.message_id for reach in reaches]
                if answered != ids:  # what it left out would never take part: a pass missing gradients
                    error = errors.Internal(f"{self._peers.world.name_of(rank)} answered a Reach about "
                                            f"{len(answered)} send points, not the {len(ids)} asked, in that order")
            if isinstance(error, errors.RpcError) and error.worker is None:  # a timeout, a lost link: it was this one
                error.worker = self._peers.world.name_of(rank)
            result.set_exception(error) if error is not None else result.set_result(reaches)

        self._peers.request(rank, request, (), self._timeout(), done)
        return result

    def _describe_reach(self, context_id: int, ids) -> List[pb.Reach]:
        reaches = []
        for message_id in ids:
            point = self._contexts.send_point(message_id)
            if point.context_id != context_id:
                raise errors.InvalidArgument(f"send point {message_id} belongs to context {point.context_id}, not to "
                                             f"context {context_id} the Reach asked about")
            ctx = self._contexts.get(point.context_id)
            found = ctx.activations.of(point.edge.node, point.edge.output_nr)
            reaches.append(pb.Reach(message_id=message_id, activates=sorted(found.ids), unknown=sorted(found.unknown)))
        return reaches

    def handle_reach(self, link, body: pb.ReachRequest, attachments) -> pb.Response:
        return pb.Response(reach=pb.ReachReply(reaches=self._describe_reach(body.context_id, body.message_ids)))
