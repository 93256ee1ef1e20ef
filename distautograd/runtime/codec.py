"""Python values to and from the wire for this worker: tensors as attachments, RRefs as handles, autograd points recorded.

Inside a context, every tensor that requires grad gets a send point on the way out (with what
gradient reaching it would set off, when that is small enough to travel) and a recv point on
the way in. Gradients pushed in a backward pass are values like any other.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from distautograd.encoding import pickling, tensor_lists, tensors
from distautograd.encoding.allowlist import Allowlist
from distautograd.errors import InvalidArgument
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.contexts import Context, ContextStore
from distautograd.runtime.options import DEFAULT_MAX_MESSAGE
from distautograd.runtime.rref import RRef
from distautograd.runtime.rrefs import RRefStore

# Activations bigger than this do not travel; the root of a pass asks for them instead.
ACTIVATES_LIMIT = 1024


def _is_tensor_list(obj: Any) -> bool:
    """A list of tensors and Nones, no tensor twice (pickling keeps one object for both)."""
    if type(obj) is not list:
        return False
    ids = set()
    for item in obj:
        if item is None:
            continue
        if not isinstance(item, torch.Tensor) or id(item) in ids:
            return False
        ids.add(id(item))
    return True


class Codec:
    def __init__(self, allowlist: Allowlist, rrefs: RRefStore, contexts: ContextStore,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE):
        """``max_message_bytes``: also the most bytes the all-zero tensors of one message may make."""
        self.max_message_bytes = max_message_bytes
        self.allowlist = allowlist
        self._rrefs = rrefs
        self._contexts = contexts

    def encode(self, obj: Any, dest: int, ctx: Optional[Context], compact_zeros: bool = False) -> Tuple[pb.Value, List[Any]]:
        """The value for worker ``dest``; inside a context every tensor that requires grad gets a send point."""
        if _is_tensor_list(obj):
            return self._encode_tensor_list(obj, dest, ctx, compact_zeros)
        handles: List[pb.RRefHandle] = []
        seen: dict = {}
        found: List[torch.Tensor] = []  # each tensor once, in pickling order; alive, so its id() stays its own

        def persistent(o: Any):
            if isinstance(o, torch.Tensor):
                index = seen.get(id(o))
                if index is None:
                    index = seen[id(o)] = len(found)
                    found.append(o)
                return index  # tensors are ids 0, 1, ...
            if isinstance(o, RRef):
                handles.append(self._rrefs.handle_for(o, dest))
                return -len(handles)  # rrefs are ids -1, -2, ...
            return None

        pickle = pickling.dumps(obj, persistent)
        value, attachments = self._encode_tensors(found, dest, ctx, compact_zeros)
        value.pickle = pickle
        value.rrefs.extend(handles)
        return value, attachments

    def _encode_tensors(self, found: List[torch.Tensor], dest: int, ctx: Optional[Context],
                        compact_zeros: bool) -> Tuple[pb.Value, List[Any]]:
        """A Value holding the descriptions of a value's tensors, in order, and their attachments: the core's
        in one call where each is plain; inside a context every one that requires grad gets a send point."""
        coded = tensor_lists.encode_tensors(found, compact_zeros) if found else None
        if coded is not None:
            value, attachments = coded
        else:
            value, attachments = pb.Value(), []
            for tensor in found:
                value.tensors.append(tensors.encode(tensor, attachments, compact_zeros))
        if ctx is not None:
            first_send: List[int] = []  # the message id of this value's first send point names the whole message
            for meta, tensor in zip(value.tensors, found):
                if tensor.requires_grad:
                    self._send_point(meta, ctx, tensor, dest, first_send)
        return value, attachments

    def encode_push(self, context_id: int, pass_id: int, plan: Optional[bytes], message_ids: List[int], grads: list,
                    root: int, done: List[Tuple[int, int]]) -> Optional[Tuple[bytes, List[Any]]]:
        """A backward's push of plain gradients as one serialized Request written by the core (see
        tensor_lists.encode_push); None where ``encode`` must code the gradients (and a PushGradients
        be built around them): no core, a tensor that requires grad (a send point), or one twice."""
        if not _is_tensor_list(grads) or any(g is not None and g.requires_grad for g in grads):
            return None  # (without asking the core, which would refuse it only after coding the tensors before it)
        return tensor_lists.encode_push(context_id, pass_id, plan, message_ids, grads, root, done)

    def _encode_tensor_list(self, items: list, dest: int, ctx: Optional[Context],
                            compact_zeros: bool) -> Tuple[pb.Value, List[Any]]:
        """A list of distinct tensors (and Nones) without pickling it: the common case of gradients."""
        coded = tensor_lists.encode(items, compact_zeros)  # no tensor of it requires grad: no send points
        if coded is not None:
            return coded
        value = pb.Value(tensor_list=True)
        attachments: List[Any] = []
        first_send: List[int] = []
        for index, item in enumerate(items):
            if item is None:
                value.none_at.append(index)
                continue
            meta = tensors.encode(item, attachments, compact_zeros)
            if ctx is not None and item.requires_grad:
                self._send_point(meta, ctx, item, dest, first_send)
            value.tensors.append(meta)
        return value, attachments

    def _send_point(self, meta: pb.TensorMeta, ctx: Context, tensor: torch.Tensor, dest: int,
                    first_send: List[int]) -> None:
        message_id, activation = self._contexts.add_send_point(ctx, tensor, dest, first_send[0] if first_send else 0)
        first_send[:1] = first_send[:1] or [message_id]
        meta.autograd_message_id = message_id
        if activation.unknown or len(activation.ids) > ACTIVATES_LIMIT:
            meta.activates_unknown = True
        else:
            meta.activates.extend(sorted(activation.ids))

    def rrefs_of(self, value: pb.Value) -> List[RRef]:
        """The RRefs a value carries, registered now: forks must register in the order messages came."""
        return [self._rrefs.from_handle(handle) for handle in value.rrefs]

    def decode(self, value: pb.Value | bytes, attachments: List[Any], src: int, ctx: Optional[Context],
               rrefs: Optional[List[RRef]] = None) -> Any:
        """The value worker ``src`` sent; tensors with a message id become recv points of ``ctx``.
        ``rrefs``: from rrefs_of, when the RRefs were registered earlier than the value is decoded.
        ``value`` serialized: a push's gradients the core read (transport.pushes), parsed only when the
        core's decoder does not take them."""
        if isinstance(value, bytes):
            plain = tensor_lists.decode(value, attachments, self.max_message_bytes)
            if plain is not None:
                return plain
            value = pb.Value.FromString(value)  # the core did not take it: the Python codec says why
        elif value.tensor_list and not value.rrefs:
            plain = tensor_lists.decode(value, attachments, self.max_message_bytes)  # no tensor has a recv point
            if plain is not None:
                return plain
        if rrefs is None:
            rrefs = self.rrefs_of(value)
        decoded = self._tensors(value, attachments, src, ctx)
        if value.tensor_list:
            return self._decode_tensor_list(value, decoded, rrefs)

        def persistent_load(pid: int) -> Any:
            if 0 <= pid < len(decoded):
                return decoded[pid]
            if -len(rrefs) <= pid < 0:
                return rrefs[-pid - 1]
            raise InvalidArgument(f"malformed pickle: persistent id {pid!r} refers to nothing in the message")

        return pickling.loads(value.pickle, self.allowlist, persistent_load)

    def _decode_tensor_list(self, value: pb.Value, decoded: List[torch.Tensor], rrefs: List[RRef]) -> list:
        size = len(value.tensors) + len(value.none_at)
        nones = set(value.none_at)
        if value.pickle or rrefs or len(nones) != len(value.none_at) or any(i >= size for i in nones):
            raise InvalidArgument("malformed tensor list: a pickle or RRefs beside it, or None places out of range")
        tensors_in_order = iter(decoded)
        return [None if i in nones else next(tensors_in_order) for i in range(size)]

    def _tensors(self, value: pb.Value, attachments: List[Any], src: int, ctx: Optional[Context]) -> List[torch.Tensor]:
        """Every tensor of a message; those with a message id become the outputs of its one recv node.
        Made by the core in one call where each is a plain dense tensor (their autograd bits applied here)."""
        metas = value.tensors
        made = tensor_lists.decode_tensors(value, attachments, self.max_message_bytes) if metas else None
        decoded: List[torch.Tensor] = []
        arrived: List[tuple] = []  # (index, (tensor, message id, what its send point activates))
        unsent = tensors.UnsentBudget(self.max_message_bytes) if made is None else None
        for index, meta in enumerate(metas):
            tensor = made[index] if made is not None else tensors.decode(meta, attachments, unsent)
            if meta.autograd_message_id and ctx is not None:
                sent = None if meta.activates_unknown else meta.activates
                arrived.append((len(decoded), (tensor, meta.autograd_message_id, sent)))
            elif meta.parameter:
                tensor = torch.nn.Parameter(tensor, requires_grad=meta.requires_grad)
            elif meta.requires_grad:
                tensor.requires_grad_(True)
            decoded.append(tensor)
        if arrived:
            outs = self._contexts.add_recv_points(ctx, [entry for _, entry in arrived], src)
            for (index, _), out in zip(arrived, outs):
                decoded[index] = out
        return decoded
