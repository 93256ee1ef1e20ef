"""Python values to and from the wire for one worker: tensors as attachments, RRefs as handles, autograd edges recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Tuple

import torch

from distautograd.errors import InvalidArgument
from distautograd.runtime.rrefs import RRef
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.encoding import pickling, tensors

if TYPE_CHECKING:
    from distautograd.autograd.contexts import Context
    from distautograd.runtime.agent import Agent


class Codec:
    def __init__(self, agent: "Agent"):
        self.agent = agent

    def encode(self, obj: Any, dest: int, ctx: Optional["Context"]) -> Tuple[pb.Value, List[Any]]:
        """The value for worker ``dest``; inside a context every tensor that requires grad gets a send point."""
        metas: List[pb.TensorMeta] = []
        handles: List[pb.RRefHandle] = []
        attachments: List[Any] = []
        seen: dict = {}
        kept: list = []  # keeps each tensor alive, so its id() stays its own until we are done

        def persistent(o: Any):
            if isinstance(o, torch.Tensor):
                index = seen.get(id(o))
                if index is None:
                    meta = tensors.encode(o, attachments)
                    if ctx is not None and o.requires_grad:
                        meta.autograd_message_id = ctx.add_send_point(o, dest)
                    index = seen[id(o)] = len(metas)
                    metas.append(meta)
                    kept.append(o)
                return index  # tensors are ids 0, 1, ...
            if isinstance(o, RRef):
                handles.append(self.agent.rrefs.handle_for(o, dest))
                return -len(handles)  # rrefs are ids -1, -2, ...
            return None

        pickle = pickling.dumps(obj, persistent)
        return pb.Value(pickle=pickle, tensors=metas, rrefs=handles), attachments

    def decode(self, value: pb.Value, attachments: List[Any], src: int, ctx: Optional["Context"]) -> Any:
        """The value worker ``src`` sent; tensors with a message id become recv points of ``ctx``."""
        decoded: dict = {}

        def persistent_load(pid: int) -> Any:
            if 0 <= pid < len(value.tensors):
                if pid not in decoded:
                    decoded[pid] = self._tensor(value.tensors[pid], attachments, src, ctx)
                return decoded[pid]
            if -len(value.rrefs) <= pid < 0:
                return self.agent.rrefs.from_handle(value.rrefs[-pid - 1])
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
