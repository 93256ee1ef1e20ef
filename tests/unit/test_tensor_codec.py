"""Tensors travel as raw bytes plus dtype and shape: every CPU dtype and layout comes back bit-exact."""

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from distautograd.errors import InvalidArgument
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.encoding import tensors

QUANTIZED = {torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4}
PLAIN = [d for d in tensors.all_dtypes() if d not in QUANTIZED]


def random_tensor(shape, dtype, seed=0):
    """A tensor of ``dtype`` whose bytes are random: covers NaN payloads, subnormals, every bit pattern."""
    t = torch.empty(shape, dtype=dtype)
    raw = t.reshape(-1).view(torch.uint8)
    g = torch.Generator().manual_seed(seed)
    raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8, generator=g))
    if dtype == torch.bool:
        raw.clamp_(0, 1)
    return t


def through_the_wire(t):
    """Encode, serialize the metadata like the wire does, and decode from immutable bytes."""
    attachments = []
    meta = tensors.encode(t, attachments)
    meta = pb.TensorMeta.FromString(meta.SerializeToString())
    return tensors.decode(meta, [bytes(a) for a in attachments])


def same_bits(a, b):
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and tensors.raw_bytes(a).tobytes() == tensors.raw_bytes(b).tobytes()
    )


@pytest.mark.parametrize("dtype", PLAIN, ids=str)
@pytest.mark.parametrize(
    "view",
    ["contiguous", "strided", "transposed", "row", "scalar", "zero_size", "empty_rows"],
)
def test_every_dtype_and_layout_round_trips_bit_exactly(dtype, view):
    base = random_tensor((4, 6), dtype)
    t = {
        "contiguous": base,
        "strided": base[:, ::2],
        "transposed": base.t(),
        "row": base[2],
        "scalar": base[1, 3],
        "zero_size": base[:0],
        "empty_rows": torch.empty((0, 5), dtype=dtype),
    }[view]
    out = through_the_wire(t)
    assert same_bits(out, t)
    assert out.stride() == t.stride() or t.numel() <= 1  # small views keep their layout, as in torch


def test_a_view_that_reaches_much_more_memory_than_it_holds_travels_compact():
    base = torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64)
    narrow = through_the_wire(base[:, :2])  # 16 KiB reached for 512 bytes of elements: copied, as torch
    assert narrow.is_contiguous() and torch.equal(narrow, base[:, :2])
    expanded = through_the_wire(torch.arange(3.0).expand(1000, 3))  # 12 bytes reached: kept, stride 0
    assert expanded.stride() == (0, 1) and torch.equal(expanded, torch.arange(3.0).expand(1000, 3))


def test_strides_that_reach_past_the_bytes_that_arrived_are_refused():
    attachments: list = []
    meta = tensors.encode(torch.arange(6.0).reshape(2, 3).t(), attachments)
    meta.strides[0] = 5
    with pytest.raises(InvalidArgument, match="strides"):
        tensors.decode(meta, attachments)


def test_received_tensors_are_writable_and_independent():
    t = torch.arange(6.0)
    out = through_the_wire(t)
    out.add_(1)
    assert torch.equal(t, torch.arange(6.0))


def test_conjugate_and_negative_views_arrive_equal_with_their_bits():
    c = torch.randn(5, dtype=torch.complex64)
    assert torch.equal(through_the_wire(c.conj()), c.conj()) and through_the_wire(c.conj()).is_conj()
    assert torch.equal(through_the_wire(torch._neg_view(c)), -c) and through_the_wire(torch._neg_view(c)).is_neg()


def test_quantized_per_tensor_and_per_channel():
    q = torch.quantize_per_tensor(torch.randn(4, 3), 0.1, 3, torch.qint8)
    out = through_the_wire(q)
    assert out.dtype == torch.qint8 and torch.equal(out.int_repr(), q.int_repr())
    assert (out.q_scale(), out.q_zero_point()) == (q.q_scale(), q.q_zero_point())
    scales, zero_points = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), torch.tensor([1, 2, 3])
    qc = torch.quantize_per_channel(torch.randn(4, 3), scales, zero_points, 1, torch.quint8)
    out = through_the_wire(qc)
    assert torch.equal(out.int_repr(), qc.int_repr())
    assert torch.equal(out.q_per_channel_scales(), qc.q_per_channel_scales())
    assert out.q_per_channel_axis() == 1


@pytest.mark.parametrize("dtype", sorted(QUANTIZED, key=str), ids=str)
@pytest.mark.parametrize("numel", [1, 5, 6, 7])  # sub-byte dtypes pack 2 or 4 values in a byte: odd counts too
def test_every_quantized_dtype_round_trips_bit_exactly(dtype, numel):
    values = torch.linspace(-3, 3, numel)
    q = torch.quantize_per_tensor(values, 0.25, 1, dtype)
    out = through_the_wire(q)
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.equal(out.int_repr(), q.int_repr()) and torch.equal(out.dequantize(), q.dequantize())
    assert (out.q_scale(), out.q_zero_point()) == (q.q_scale(), q.q_zero_point())


@pytest.mark.parametrize("dtype", [torch.quint8, torch.quint4x2, torch.quint2x4], ids=str)
def test_per_channel_float_qparams_as_embedding_bags_use_them(dtype):
    weight = torch.randn(4, 6)
    q = torch.quantize_per_channel(weight, torch.rand(4) + 0.1, torch.randn(4), 0, dtype)
    assert q.qscheme() == torch.per_channel_affine_float_qparams
    out = through_the_wire(q)
    assert out.dtype == dtype and out.qscheme() == q.qscheme()
    assert torch.equal(out.int_repr(), q.int_repr()) and torch.equal(out.dequantize(), q.dequantize())
    assert torch.equal(out.q_per_channel_zero_points(), q.q_per_channel_zero_points())


def test_a_quantized_tensor_whose_integers_do_not_fit_its_dtype_is_refused():
    attachments: list = []
    meta = tensors.encode(torch.quantize_per_tensor(torch.randn(5), 0.1, 0, torch.qint32), attachments)
    meta.dtype = "uint8"  # qint32's integers are int32: _make_per_tensor_quantized_tensor would make a quint8
    with pytest.raises(InvalidArgument, match="travels as int32"):
        tensors.decode(meta, attachments)
    meta = tensors.encode(torch.quantize_per_tensor(torch.randn(5), 0.1, 0, torch.quint4x2), attachments := [])
    meta.shape[0] = 9  # 5 bytes would be needed, 3 arrived
    with pytest.raises(InvalidArgument, match="needs 5 bytes but 3 arrived"):
        tensors.decode(meta, attachments)


def test_a_non_contiguous_sub_byte_view_is_refused_with_the_reason():
    q = torch.quantize_per_tensor(torch.randn(3, 4), 0.25, 1, torch.quint4x2).t()
    with pytest.raises(InvalidArgument, match="non-contiguous torch.quint4x2"):
        tensors.encode(q, [])


def test_flags_travel():
    p = torch.nn.Parameter(torch.randn(2))
    attachments = []
    meta = tensors.encode(p, attachments)
    assert meta.parameter and meta.requires_grad


def test_wrong_sizes_are_refused():
    meta = pb.TensorMeta(dtype="float32", shape=[4], attachment=0)
    with pytest.raises(InvalidArgument, match="needs 16 bytes but 3 arrived"):
        tensors.decode(meta, [b"abc"])
    with pytest.raises(InvalidArgument, match="unknown tensor dtype"):
        tensors.decode(pb.TensorMeta(dtype="os.system", shape=[1]), [b"x"])
    with pytest.raises(InvalidArgument, match="attachment 3"):
        tensors.decode(pb.TensorMeta(dtype="uint8", shape=[1], attachment=3), [b"x"])
    with pytest.raises(InvalidArgument, match="negative"):
        tensors.decode(pb.TensorMeta(dtype="uint8", shape=[-1, -1], attachment=0), [b"x"])


shapes = st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=4)


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(PLAIN),
    shape=shapes,
    seed=st.integers(0, 2**31 - 1),
    permute=st.booleans(),
    step=st.integers(min_value=1, max_value=3),
)
def test_property_any_dtype_shape_and_view_round_trips(dtype, shape, seed, permute, step):
    t = random_tensor(shape, dtype, seed)
    if permute and t.dim() > 1:
        t = t.permute(*reversed(range(t.dim())))
    if t.dim() and step > 1:
        t = t[::step]
    out = through_the_wire(t)
    assert same_bits(out, t)
    assert math.prod(out.shape) == t.numel()


SPARSE = {
    "coo uncoalesced": lambda: torch.sparse_coo_tensor(torch.tensor([[1, 0, 1]]), torch.tensor([1.0, 2.0, 3.0]), (3,)),
    "coo hybrid": lambda: torch.randn(4, 3, dtype=torch.float64).to_sparse(1),
    "csr": lambda: torch.tensor([[0.0, 1.5], [2.0, 0.0]]).to_sparse_csr(),
    "csc": lambda: torch.tensor([[0.0, 1.5], [2.0, 0.0]]).to_sparse_csc(),
    "bsr": lambda: torch.arange(16.0).reshape(4, 4).to_sparse_bsr((2, 2)),
    "bsc": lambda: torch.arange(16.0).reshape(4, 4).to_sparse_bsc((2, 2)),
}


@pytest.mark.parametrize("name", list(SPARSE))
def test_sparse_tensors_round_trip_part_for_part(name):
    sent = SPARSE[name]()
    attachments = []
    back = tensors.decode(tensors.encode(sent, attachments), attachments)
    assert back.layout == sent.layout and back.shape == sent.shape and back.dtype == sent.dtype
    if sent.layout == torch.sparse_coo:
        assert back.is_coalesced() == sent.is_coalesced()
        assert torch.equal(back._indices(), sent._indices()) and torch.equal(back._values(), sent._values())
    else:
        assert torch.equal(back.to_dense(), sent.to_dense()) and torch.equal(back.values(), sent.values())


def test_sparse_tensors_a_peer_made_up_are_refused():
    attachments = []
    meta = tensors.encode(torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.ones(2), (3,)), attachments)
    meta.shape[0] = 2  # index 2 now points past the end
    with pytest.raises(InvalidArgument, match="malformed sparse tensor"):
        tensors.decode(meta, attachments)
    attachments = []
    meta = tensors.encode(torch.sparse_coo_tensor(torch.tensor([[1, 1]]), torch.ones(2), (3,)), attachments)
    meta.sparse.coalesced = True  # a claim its duplicate indices contradict
    with pytest.raises(InvalidArgument, match="malformed sparse tensor"):
        tensors.decode(meta, attachments)
    attachments = []
    meta = tensors.encode(torch.tensor([[0.0, 1.0]]).to_sparse_csr(), attachments)
    nested = pb.TensorMeta()
    nested.CopyFrom(meta)
    meta.sparse.parts[0].CopyFrom(nested)  # a sparse tensor nested in its own parts
    with pytest.raises(InvalidArgument, match="plain dense tensors"):
        tensors.decode(meta, attachments)


def test_zeros_travel_as_a_shape_only_when_every_element_is_zero():
    zeros, late = torch.zeros(64, 32), torch.zeros(64, 32)
    late[63, 31] = 1.0  # zero first element, not all zeros
    assert tensors.encode(zeros, [], compact_zeros=True).zeros
    assert not tensors.encode(late, [], compact_zeros=True).zeros
    assert not tensors.encode(torch.ones(()).expand(8, 8), [], compact_zeros=True).zeros
