"""Lists of plain tensors and Nones (gradients, mostly), a backward's pushes of them, and the tensors of any value, coded by the compiled core in one call each; None where the Python codec must do it.

The common case is a list of exactly-``torch.Tensor`` tensors, dense, in C order, of the usual
dtypes, with no autograd, Parameter, conjugate or negative bit (native/csrc/tensor_list.h). The core
writes the same bytes as ``tensors.encode`` would and reads a Value as ``tensors.decode`` does; a
list it does not take, and anything malformed, goes to the Python codec, which says what is wrong.
Any other value's tensors (``encode_tensors``, ``decode_tensors``) take the same path, where a tensor
may also be a ``Parameter`` or require grad: the core writes those bits, the caller reads them back
and adds the pickle and the send and recv points. ``DISTAUTOGRAD_NATIVE_PATH=0`` leaves all of it to
Python.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from distautograd import native
from distautograd.protocol.v1 import messages_pb2 as pb


def encode(items: list, compact_zeros: bool) -> Optional[Tuple[pb.Value, List[Any]]]:
    """(the Value, its attachments) for ``items``, or None when it is not the common case."""
    if not native.path_on():
        return None
    return _parsed(native.core.encode_tensor_list(items, compact_zeros))


def encode_tensors(items: list, compact_zeros: bool) -> Optional[Tuple[pb.Value, List[Any]]]:
    """(a Value holding the descriptions of ``items``, in order, their attachments) for the tensors of any
    value (a call's): exactly ``torch.Tensor`` or ``torch.nn.Parameter``, which may require grad (the
    caller adds message ids, the pickle and the RRefs); None when one is not the common case."""
    if not native.path_on():
        return None
    return _parsed(native.core.encode_value_tensors(items, compact_zeros))


def _parsed(coded: Optional[Tuple[bytes, List[Any]]]) -> Optional[Tuple[pb.Value, List[Any]]]:
    """The core's (serialized Value, attachments) with the Value parsed, or None as it came."""
    if coded is None:
        return None
    value, attachments = coded
    return pb.Value.FromString(value), attachments


def encode_push(context_id: int, pass_id: int, plan: Optional[bytes], message_ids: List[int], grads: list, root: int,
                done: List[Tuple[int, int]]) -> Optional[Tuple[bytes, List[Any]]]:
    """(the serialized Request{push_gradients}, its attachments), the bytes protobuf writes for the
    push (native/csrc/push_request.h), with all-zero gradients compact; None when the gradients are
    not the common case. ``plan``: the serialized PassPlan, or None when it does not ride along;
    ``done``: (rank, leaves) of each part the push says is done."""
    if not native.path_on():
        return None
    return native.core.encode_push_request(context_id, pass_id, plan, message_ids, grads, root, done, True)


def decode(value: pb.Value | bytes, attachments: Sequence[Any], unsent_limit: int) -> Optional[list]:
    """The list ``value`` (or its serialized bytes) describes, its tensors over the attachments' memory;
    None when it is not the common case, is malformed, or its all-zero tensors and expanded views
    together would take over ``unsent_limit`` bytes beyond those that came."""
    if not native.path_on():
        return None
    serialized = value if isinstance(value, bytes) else value.SerializeToString()
    return native.core.decode_tensor_list(serialized, list(attachments), unsent_limit)


def decode_tensors(value: pb.Value, attachments: Sequence[Any], unsent_limit: int) -> Optional[list]:
    """The tensors of any Value (a pickled call's), in order, made as ``decode`` makes a list's, without
    their autograd bits (requires_grad, Parameter, a message id: the caller applies them); None when one
    is not a plain dense tensor, or as ``decode`` gives None."""
    if not native.path_on():
        return None
    return native.core.decode_value_tensors(value.SerializeToString(), list(attachments), unsent_limit)
