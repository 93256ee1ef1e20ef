"""A backward's push as the compiled core read it off a socket: its fields, its plan and gradients still serialized."""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional

from google.protobuf.message import DecodeError

from distautograd import errors
from distautograd.protocol.v1 import messages_pb2 as pb


class PartDone(NamedTuple):
    """As pb.PartDone: a part of the pass is done, with the leaves it reached."""

    rank: int
    leaves: int


def parts_done(pairs) -> List[PartDone]:
    """The parts done a push the core read says, given as (rank, leaves) pairs."""
    return [PartDone(*pair) for pair in pairs] if pairs else []


def done_as_protobuf(done: List[PartDone]) -> List[pb.PartDone]:
    return [pb.PartDone(rank=rank, leaves=leaves) for rank, leaves in done]


class Taken(NamedTuple):
    """A push the core ran as it read it (native/csrc/push_lane.h): nothing is left to deliver.
    ``nbytes``: the frame's size, header and attachments; ``attachments``: how many came."""

    nbytes: int
    attachments: int


class ArrivedPush:
    """Stands in for a frame's pb.PushGradients where the handler takes one (Dispatcher.take_push):
    ``context_id``, ``pass_id``, ``root``, ``message_ids`` and ``done`` as there; ``plan()`` the plan,
    or None where none rode along; ``gradients`` the serialized Value (a list native/csrc/tensor_list.h
    takes, one per message id), which Codec.decode takes as it is. Only the core makes one
    (native/csrc/push_reading.h), of a push in the common case; every other frame is parsed by protobuf."""

    __slots__ = ("header", "attachments", "following", "context_id", "pass_id", "root", "message_ids", "done",
                 "plan_bytes", "gradients")

    def __init__(self, header: bytes, attachments: List[Any], following: int, fields: tuple):
        self.header = header  # the serialized Frame, for a handler that takes only protobuf
        self.attachments = attachments
        self.following = following  # the attachments' bytes that followed the header
        self.context_id, self.pass_id, self.root, self.message_ids, done, self.plan_bytes, self.gradients = fields
        self.done = parts_done(done)

    def plan(self) -> Optional[pb.PassPlan]:
        return None if self.plan_bytes is None else pb.PassPlan.FromString(self.plan_bytes)

    def frame(self) -> pb.Frame:
        """The frame as protobuf parses it (for a handler that takes only frames)."""
        try:
            return pb.Frame.FromString(self.header)
        except DecodeError as exc:  # never for what the core takes; if it were, the peer broke the protocol
            raise errors.InvalidArgument(f"undecodable Frame ({exc})") from None
