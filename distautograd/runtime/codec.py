"""Python values to and from the wire for one worker: tensors as attachments, RRefs as handles, autograd edges recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Tuple

import torch

from distautograd.errors import InvalidArgument
from distautograd.runtime.rrefs import RRef
from distautograd.v1 import wire_pb2 as pb
from distautograd.wire import pickling, tensors

if TYPE_CHECKING:
    from distautograd.autograd.contexts import Context
    from distautograd.runtime.agent import Agent


class Codec:
    def __init__(self, agent: "Agent"):
        self.agent = agent

    def encode(self, obj: Any, dest: int, ctx: Optional["Context"]) -> Tuple[pb.Value, List[Any]]:
        """The value for worker ``dest``; inside a context every tensor that requires grad gets a send point."""
        value = pb.Value()
        attachments: List[Any] = []
        seen: dict = {}

        def persistent(o: Any):
            if isinstance(o, torch.Tensor):
                index = seen.get(id(o))
                if index is None:
                    meta = tensors.encode(o, attachments)
                    if ctx is not None and o.requires_grad:
                        meta.autograd_message_id = ctx.add_send_point(o, dest)
                    index = seen[id(o)] = len(value.tensors)
                    value.tensors.append(meta)
                    seen[("keep", index)] = o  # ids stay unique while the object lives
                return ("t", index)
            if isinstance(o, RRef):
                value.rrefs.append(self.agent.rrefs.handle_for(o, dest))
                return ("r", len(value.rrefs) - 1)
            return None

        value.pickle = pickling.dumps(obj, persistent)
        return value, attachments

    def decode(self, value: pb.Value, attachments: List[Any], src: int, ctx: Optional["Context"]) -> Any:
        """The value worker ``src`` sent; tensors with a message id become recv points of ``ctx``."""
        decoded: dict = {}

        def persistent_load(pid: tuple) -> Any:
            if len(pid) != 2 or not isinstance(pid[1], int):
                raise InvalidArgument(f"malformed pickle: bad persistent id {pid!r}")
            kind, index = pid
            if kind == "t" and 0 <= index < len(value.tensors):
                if index not in decoded:
                    decoded[index] = self._tensor(value.tensors[index], attachments, src, ctx)
                return decoded[index]
            if kind == "r" and 0 <= index < len(value.rrefs):
                return self.agent.rrefs.from_handle(value.rrefs[index])
            raise InvalidArgument(f"malformed pickle: persistent id {pid!r} refers to nothing in the message")

        return pickling.loads(value.pickle, self.agent.allowlist, persistent_load)

    @staticmethod
    def _tensor(meta: pb.TensorMeta, attachments: List[Any], src: int, ctx: Optional["Context"]) -> torch.Tensor:
        tensor = tensors.decode(meta, attachments)
        if meta.autograd_message_id and ctx is not None:
            return ctx.add_recv_point(tensor, meta.autograd_message_id, src)
        if meta.parameter:
            return torch.nn.Parameter(tensor, requires_grad=meta.requires_grad)
        if meta.requires_grad:
            tensor.requires_grad_(True)
        return tensor
