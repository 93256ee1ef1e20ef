"""A part's pushes out of this worker: its recv points' gradients, one message to each worker, its end told on the last."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import torch

from distautograd import errors
from distautograd.ids import IdMint, rank_of
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime import inspection, tracing
from distautograd.runtime.codec import Codec
from distautograd.runtime.pass_state import Part
from distautograd.runtime.peers import Peers
from distautograd.transport import hops
from distautograd.transport.link import Serialized
from distautograd.transport.pushes import PartDone, done_as_protobuf

PUSH_RETRIES = 2
PLAN_INLINE_LIMIT = 512  # active sends a plan may hold and still ride along with every push


class PushSending:
    """What runtime/backward.py's parts send as their nodes run (``push``)."""

    def __init__(self, mint: IdMint, peers: Peers, codec: Codec):
        self._mint = mint  # this worker's rank, once it joined
        self._peers = peers
        self._codec = codec

    def push(self, part: Part, grads: Dict[int, Optional[torch.Tensor]], last: bool) -> None:
        """Sends recv points' gradients to the workers their tensors came from, one message each.
        ``last``: nothing more runs here, so the first push also says this part is done (and
        passes on the parts it learned are done), sparing a PassFinished to the root. A recv node
        reports every tensor of its message; only those whose send points take part travel (the
        loss may reach some tensors of a message and not others)."""
        by_dest: Dict[int, List[Tuple[int, Optional[torch.Tensor]]]] = {}
        ctx = part.ctx
        for message_id, grad in grads.items():
            if message_id in part.active:
                by_dest.setdefault(rank_of(message_id), []).append((message_id, grad))
        inline = len(part.plan.active_sends) <= PLAN_INLINE_LIMIT  # the plan rides along
        if hops.ON:
            hops.at("engine")
        for dest, items in by_dest.items():
            message_ids = [m for m, _ in items]
            done = self._done_to_tell(part) if last else []
            request, attachments = self._request(part, dest, message_ids, [g for _, g in items], inline, done)
            if tracing.on(ctx):
                tracing.pushed(ctx, message_ids[0], self._peers.world.name_of(dest))
            if hops.ON:
                hops.at("encoded")
            self._send(dest, request, attachments)
            if hops.ON:
                hops.sent((ctx.id, part.pass_id, message_ids[0]))

    def _done_to_tell(self, part: Part) -> List[PartDone]:
        """For a part's last push (its first, where it sends several): the part is done, and so are
        those it learned of. Once; nothing at the root, which counts them itself."""
        if part.root == self._mint.rank or part.told:
            return []
        with part.lock:
            learned, part.learned = part.learned, []
            part.told = True
        leaves = part.local.leaves_reached if part.local is not None else 0
        return [PartDone(self._mint.rank, leaves), *learned]

    def _request(self, part: Part, dest: int, message_ids: List[int], grads: list, inline: bool,
                      done: List[PartDone]) -> Tuple[Union[pb.Request, Serialized], list]:
        """(the request, its attachments) of a push to ``dest``: serialized by the core in one call where
        it can, else built as protobuf messages around the codec's value."""
        ctx = part.ctx
        if not ctx.inspect & inspection.GRAPH:  # the graph view records the value itself
            coded = self._codec.encode_push(ctx.id, part.pass_id, part.plan_bytes if inline else None, message_ids,
                                            grads, part.root, done)
            if coded is not None:
                return Serialized(coded[0]), coded[1]
        value, attachments = self._codec.encode(grads, dest, ctx, compact_zeros=True)
        if ctx.inspect & inspection.GRAPH:
            inspection.pushed(ctx, message_ids, value, attachments)
        body = pb.PushGradients(context_id=ctx.id, pass_id=part.pass_id, message_ids=message_ids, gradients=value,
                                root=part.root, done=done_as_protobuf(done))
        if inline:
            body.plan.CopyFrom(part.plan)
        return pb.Request(push_gradients=body), attachments

    def _send(self, dest: int, request, attachments) -> None:
        """A push is a notification: the pass ends when everyone reports, and the receiver cannot
        report before it has it. One that cannot be sent is retried on a fresh connection; the
        receiver drops duplicates."""
        for attempt in range(PUSH_RETRIES + 1):
            try:
                self._peers.notify(dest, request, attachments)
                return
            except errors.Unavailable:
                if attempt == PUSH_RETRIES or self._peers.world.entry(dest) is None:
                    raise
