"""Tensors to and from raw bytes plus dtype and shape: every CPU dtype, bit-exact, never pickled.

A view that is not contiguous keeps its strides, as torch's RPC keeps them, unless copying it is
worth it (torch's rule: the memory it reaches is at least 8 KiB and twice its elements): then it
travels compact, in C order. A conjugate or negative view keeps its bit, as in torch: its memory
travels as it lies and the receiver views it the same way.
"""

from __future__ import annotations

import math
from typing import Any, List, MutableSequence, Optional, Sequence

import torch

from distautograd.errors import InvalidArgument
from distautograd.protocol.v1 import messages_pb2 as pb

DTYPES: dict[str, torch.dtype] = {
    str(value).removeprefix("torch."): value for value in vars(torch).values() if isinstance(value, torch.dtype)
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_SIZES = {dtype: dtype.itemsize for dtype in _NAMES}
# A quantized tensor travels as its integer representation: the dtype it has, and for the sub-byte
# dtypes the packed bytes (ceil(numel / values per byte), filled in C order).
_INT_REPR = {torch.qint8: torch.int8, torch.quint8: torch.uint8, torch.qint32: torch.int32,
             torch.quint4x2: torch.uint8, torch.quint2x4: torch.uint8}
_QUANTIZED = set(_INT_REPR)
_PACKED = {torch.quint4x2: 2, torch.quint2x4: 4}  # values per byte
_NUMPY_DTYPES = {
    torch.float64, torch.float32, torch.float16, torch.complex64, torch.complex128, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    return _NAMES[dtype]


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise InvalidArgument(f"unknown tensor dtype {name!r}; expected one of {sorted(DTYPES)}") from None


def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's elements in C order as bytes (a copy only where the layout needs one)."""
    t = tensor.detach()
    if t.numel() == 0:
        return memoryview(b"")
    if t.dtype in _NUMPY_DTYPES and t.dim() and t.is_contiguous() and not (t.is_conj() or t.is_neg()):
        return memoryview(t.numpy()).cast("B")  # the common case, with no copy and few calls
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.element_size() == 1:
        # Sub-byte and bit dtypes have no copy kernel, but viewing them as bytes first always works.
        flat = t.view(torch.uint8).contiguous().reshape(-1)
    else:
        flat = t.contiguous().reshape(-1)
        if flat.stride(0) != 1:  # one element reached through a stride: contiguous, yet not viewable
            flat = flat.as_strided((1,), (1,))
        flat = flat.view(torch.uint8)
    return memoryview(flat.numpy()).cast("B")


_SPARSE = {torch.sparse_coo: "sparse_coo", torch.sparse_csr: "sparse_csr", torch.sparse_csc: "sparse_csc",
           torch.sparse_bsr: "sparse_bsr", torch.sparse_bsc: "sparse_bsc"}
_SPARSE_LAYOUTS = {name: layout for layout, name in _SPARSE.items()}
_ROW_COMPRESSED = (torch.sparse_csr, torch.sparse_bsr)


def check_sendable(tensor: torch.Tensor) -> None:
    if not tensor.is_cpu:
        raise InvalidArgument(
            f"cannot send a tensor on device {tensor.device}: only CPU tensors travel; call .cpu() first"
        )
    if tensor.layout != torch.strided and tensor.layout not in _SPARSE:
        raise InvalidArgument(
            f"cannot send a {tensor.layout} tensor: only dense and sparse tensors travel; call .to_dense() first"
        )


def _sparse_parts(tensor: torch.Tensor) -> list:
    if tensor.layout == torch.sparse_coo:
        return [tensor._indices(), tensor._values()]
    if tensor.layout in _ROW_COMPRESSED:
        return [tensor.crow_indices(), tensor.col_indices(), tensor.values()]
    return [tensor.ccol_indices(), tensor.row_indices(), tensor.values()]


def _encode_sparse(tensor: torch.Tensor, attachments: MutableSequence[Any]) -> pb.TensorMeta:
    """A sparse tensor as its parts, exactly as they are (an uncoalesced COO tensor stays uncoalesced)."""
    sparse = pb.Sparse(layout=_SPARSE[tensor.layout],
                       coalesced=tensor.layout == torch.sparse_coo and tensor.is_coalesced())
    for part in _sparse_parts(tensor.detach()):
        sparse.parts.append(encode(part, attachments))
    return pb.TensorMeta(dtype=_NAMES[tensor.dtype], shape=tensor.shape, requires_grad=tensor.requires_grad,
                         sparse=sparse)


def _decode_sparse(meta: pb.TensorMeta, attachments: Sequence[Any], unsent: Optional[UnsentBudget]) -> torch.Tensor:
    """Rebuilds a sparse tensor, checking its indices against its size: they come from a peer."""
    layout = _SPARSE_LAYOUTS.get(meta.sparse.layout)
    if any(part.HasField("sparse") or part.HasField("quantization") for part in meta.sparse.parts):
        raise InvalidArgument("malformed sparse tensor: its parts must be plain dense tensors")
    parts = [decode(part, attachments, unsent) for part in meta.sparse.parts]
    if layout is None or len(parts) != (2 if layout == torch.sparse_coo else 3):
        raise InvalidArgument(f"malformed sparse tensor (layout {meta.sparse.layout!r}, {len(parts)} parts)")
    size = list(meta.shape)
    try:
        if layout == torch.sparse_coo:
            return torch.sparse_coo_tensor(parts[0], parts[1], size, check_invariants=True,
                                           is_coalesced=meta.sparse.coalesced or None)
        return torch.sparse_compressed_tensor(parts[0], parts[1], parts[2], size, layout=layout, check_invariants=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InvalidArgument(f"malformed sparse tensor: {exc}") from None


def encode(tensor: torch.Tensor, attachments: MutableSequence[Any], compact_zeros: bool = False) -> pb.TensorMeta:
    """Describes ``tensor`` and appends its bytes to ``attachments``. With ``compact_zeros``, a
    tensor of zeros travels as its dtype and shape alone (gradients behind an inactive ReLU)."""
    check_sendable(tensor)
    if tensor.layout != torch.strided:
        return _encode_sparse(tensor, attachments)
    meta = pb.TensorMeta(
        dtype=_NAMES[tensor.dtype],
        shape=tensor.shape,
        requires_grad=tensor.requires_grad,
        parameter=type(tensor) is not torch.Tensor and isinstance(tensor, torch.nn.Parameter),
    )
    if compact_zeros and not tensor.requires_grad and not tensor.is_quantized and _all_zeros(tensor):
        meta.zeros = True
        return meta
    if tensor.is_quantized:
        if tensor.dtype in _PACKED and not tensor.is_contiguous():
            raise InvalidArgument(f"a non-contiguous {tensor.dtype} view cannot be sent: its values are packed "
                                  "several to a byte and torch has no copy kernel to lay them out; send its base")
        meta.quantization.CopyFrom(_encode_quantization(tensor, attachments))
        tensor = tensor.int_repr()
        meta.dtype = dtype_name(tensor.dtype)
    if tensor.is_conj():  # the bits travel, as torch's RPC keeps them; the memory goes as it lies
        meta.conj, tensor = True, tensor.conj()
    if tensor.is_neg():
        meta.neg, tensor = True, torch._neg_view(tensor)
    meta.attachment = len(attachments)
    span = _kept_span(tensor)
    if span:
        meta.strides.extend(tensor.stride())
        tensor = tensor.detach().as_strided((span,), (1,), tensor.storage_offset())
    attachments.append(raw_bytes(tensor))
    return meta


RECOPY_BYTES = 8 * 1024  # torch's rule for views: copy one that reaches this much memory ...
RECOPY_MULTIPLE = 2  # ... and at least this many times the bytes of its elements


def _kept_span(tensor: torch.Tensor) -> int:
    """How many elements from its first one a view that keeps its strides must send; 0 to send it compact."""
    if tensor.is_contiguous() or not tensor.numel() or tensor.is_quantized:
        return 0
    span = _span(tensor.shape, tensor.stride())
    size = tensor.element_size()
    if span * size >= RECOPY_BYTES and span >= RECOPY_MULTIPLE * tensor.numel():
        return 0
    return span


def _span(shape, strides) -> int:
    """How many elements from the first a strided layout reaches (shape with no zero size)."""
    return 1 + sum((size - 1) * stride for size, stride in zip(shape, strides))


def _all_zeros(tensor: torch.Tensor) -> bool:
    """Whether every element is zero; a dense gradient usually shows a non-zero first element,
    which saves scanning it all (and copying it, if it is an expanded one)."""
    if not tensor.numel():
        return False
    if tensor[(0,) * tensor.dim()]:
        return False
    return not tensor.any()


class UnsentBudget:
    """The bytes one message may still describe without sending them: all-zero tensors travel as a
    shape alone, and an expanded view as the few elements it reaches, so without a bound a few bytes
    from a peer could ask for any amount of memory (or of work, once torch sums an expanded
    gradient down to its tensor's shape)."""

    def __init__(self, limit: int):
        self.left = limit

    def take(self, nbytes: int) -> None:
        if nbytes > self.left:
            raise InvalidArgument(f"a message's all-zero tensors and expanded views would take more than the "
                                  f"{self.left} bytes this process still allows it (max_message_bytes)")
        self.left -= nbytes


def decode(meta: pb.TensorMeta, attachments: Sequence[Any], unsent: Optional[UnsentBudget] = None) -> torch.Tensor:
    """Rebuilds a tensor from its description and the received attachments (requires_grad is left off);
    all-zero tensors and expanded views are made only within ``unsent``, where given (a peer's message)."""
    if meta.HasField("sparse"):
        return _decode_sparse(meta, attachments, unsent)
    dtype = dtype_from_name(meta.dtype)
    shape = list(meta.shape)
    if any(size < 0 for size in shape):
        raise InvalidArgument(f"tensor shape {shape} has a negative size")
    elements = math.prod(shape)
    if meta.zeros:
        if unsent is not None:
            unsent.take(elements * _element_size(dtype))
        return torch.zeros(shape, dtype=dtype)
    data = _attachment(attachments, meta.attachment)
    strides = list(meta.strides)
    if strides and (len(strides) != len(shape) or any(s < 0 for s in strides) or not elements):
        raise InvalidArgument(f"tensor strides {strides} do not fit its shape {shape}")
    packed = _packed_per_byte(meta, dtype)
    if packed and strides:
        raise InvalidArgument(f"a packed {meta.quantization.dtype} tensor cannot have strides")
    count = _span(shape, strides) if strides else elements
    expected = -(-count // packed) if packed else count * _element_size(dtype)
    if len(data) != expected:
        raise InvalidArgument(
            f"tensor of dtype {meta.dtype}, shape {shape} and strides {strides or 'C order'} needs {expected} bytes "
            f"but {len(data)} arrived"
        )
    if strides and unsent is not None and elements > count:  # an expanded view: more elements than bytes
        unsent.take((elements - count) * _element_size(dtype))
    if packed:
        tensor = _as_uint8(data) if expected else torch.empty(0, dtype=torch.uint8)
    elif expected == 0:
        tensor = torch.empty(shape, dtype=dtype)
    elif strides:  # every element it reaches lies within the bytes that arrived: checked just above
        tensor = _as_uint8(data).view(dtype).as_strided(shape, strides)
    else:
        tensor = _as_uint8(data).view(dtype).reshape(shape)
    if meta.HasField("quantization"):
        tensor = _decode_quantization(tensor, shape, meta.quantization, attachments)
    if meta.conj:
        if not dtype.is_complex:
            raise InvalidArgument(f"a {meta.dtype} tensor cannot carry the conjugate bit: only complex ones do")
        tensor = tensor.conj()
    if meta.neg:
        if meta.HasField("quantization") or dtype == torch.bool:
            raise InvalidArgument(f"a {meta.quantization.dtype or meta.dtype} tensor cannot carry the negative bit")
        tensor = torch._neg_view(tensor)
    return tensor


def _packed_per_byte(meta: pb.TensorMeta, dtype: torch.dtype) -> int:
    """Values per byte of a quantized tensor whose integers are packed (0 when they are not);
    checks that the integers' dtype is the one its quantized dtype has."""
    if not meta.HasField("quantization"):
        return 0
    qdtype = dtype_from_name(meta.quantization.dtype)
    if qdtype not in _QUANTIZED:
        raise InvalidArgument(f"{meta.quantization.dtype} is not a quantized dtype")
    if dtype != _INT_REPR[qdtype]:
        raise InvalidArgument(f"a {meta.quantization.dtype} tensor travels as {dtype_name(_INT_REPR[qdtype])}, "
                              f"not {meta.dtype}")
    return _PACKED.get(qdtype, 0)


def _element_size(dtype: torch.dtype) -> int:
    return _SIZES[dtype]


def _attachment(attachments: Sequence[Any], index: int) -> memoryview:
    if index >= len(attachments):
        raise InvalidArgument(f"tensor refers to attachment {index} but the message has {len(attachments)}")
    return memoryview(attachments[index]).cast("B")


def _as_uint8(data: memoryview) -> torch.Tensor:
    if data.readonly:
        # Received bytes are immutable; the tensor the user gets must be writable, as torch's are.
        data = bytearray(data)
    return torch.frombuffer(data, dtype=torch.uint8)


def _encode_quantization(tensor: torch.Tensor, attachments: MutableSequence[Any]) -> pb.Quantization:
    scheme = tensor.qscheme()
    q = pb.Quantization(dtype=dtype_name(tensor.dtype))
    if scheme == torch.per_tensor_affine:
        q.qscheme = "per_tensor_affine"
        q.scale = tensor.q_scale()
        q.zero_point = tensor.q_zero_point()
    elif scheme in (torch.per_channel_affine, torch.per_channel_affine_float_qparams):
        q.qscheme = str(scheme).removeprefix("torch.")
        scale_dtype, zero_point_dtype = _CHANNEL_PARAMS[q.qscheme]
        q.axis = tensor.q_per_channel_axis()
        q.scales_attachment = len(attachments)
        attachments.append(raw_bytes(tensor.q_per_channel_scales().to(scale_dtype)))
        q.zero_points_attachment = len(attachments)
        attachments.append(raw_bytes(tensor.q_per_channel_zero_points().to(zero_point_dtype)))
    else:
        raise InvalidArgument(f"cannot send a quantized tensor with qscheme {scheme}")
    return q


# The dtypes of the per-channel scales and zero points, as torch keeps them for each scheme.
_CHANNEL_PARAMS = {"per_channel_affine": (torch.float64, torch.int64),
                   "per_channel_affine_float_qparams": (torch.float32, torch.float32)}


def _decode_quantization(int_repr: torch.Tensor, shape: List[int], q: pb.Quantization,
                         attachments: Sequence[Any]) -> torch.Tensor:
    qdtype = dtype_from_name(q.dtype)  # a quantized dtype whose integers arrived: checked by _packed_per_byte
    if q.qscheme == "per_tensor_affine":
        if qdtype not in _PACKED:
            return torch._make_per_tensor_quantized_tensor(int_repr, q.scale, q.zero_point)
        out = torch._empty_affine_quantized(shape, scale=q.scale, zero_point=q.zero_point, dtype=qdtype)
    elif q.qscheme in _CHANNEL_PARAMS:
        if not 0 <= q.axis < len(shape):
            raise InvalidArgument(f"per-channel axis {q.axis} does not fit a tensor of shape {shape}")
        scale_dtype, zero_point_dtype = _CHANNEL_PARAMS[q.qscheme]
        scales = _side_tensor(attachments, q.scales_attachment, scale_dtype, shape[q.axis])
        zero_points = _side_tensor(attachments, q.zero_points_attachment, zero_point_dtype, shape[q.axis])
        if qdtype not in _PACKED:
            return torch._make_per_channel_quantized_tensor(int_repr, scales, zero_points, q.axis)
        out = torch._empty_per_channel_affine_quantized(shape, scales=scales, zero_points=zero_points, axis=q.axis,
                                                         dtype=qdtype)
    else:
        raise InvalidArgument(f"unknown qscheme {q.qscheme!r}")
    storage = out.untyped_storage()
    torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),))[: int_repr.numel()].copy_(int_repr)
    return out


def _side_tensor(attachments: Sequence[Any], index: int, dtype: torch.dtype, count: int) -> torch.Tensor:
    meta = pb.TensorMeta(dtype=dtype_name(dtype), shape=[count], attachment=index)
    return decode(meta, attachments)


def all_dtypes() -> List[torch.dtype]:
    """Every dtype torch defines, for tests and docs."""
    return sorted(set(DTYPES.values()), key=str)
