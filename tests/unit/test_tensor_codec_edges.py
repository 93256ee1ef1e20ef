"""Edge cases of the tensor codec: odd layouts, torch's recopy rule at its limits, and malformed messages refused."""

import pytest
import torch

from distautograd.errors import InvalidArgument
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.encoding import tensors
from tests.unit.test_tensor_codec import SPARSE, random_tensor, through_the_wire

SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t):
    """The tensor's elements as integers of the same width: a bit-exact comparison that NaN payloads cannot fool."""
    return t.view(SAME_SIZE_INT[t.element_size()])


def wire(meta):
    return pb.TensorMeta.FromString(meta.SerializeToString())


# raw_bytes: bytes are unsigned, and a single element reached through a stride still reads.

@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16, torch.uint16], ids=str)
def test_raw_bytes_are_the_unsigned_bytes_numpy_sees(dtype):
    t = torch.tensor([-1.0, -2.5, 255.0]).to(dtype) if dtype.is_floating_point else torch.tensor([255, 128, 1]).to(dtype)
    expected = bits(t).numpy().tobytes()  # numpy's own bytes of the same memory
    raw = tensors.raw_bytes(t)
    assert raw == expected and list(raw) == list(expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.uint16, torch.uint32, torch.complex32], ids=str)
def test_one_element_reached_through_a_stride_round_trips(dtype):
    t = random_tensor((4,), dtype)[::2][:1]  # contiguous by torch's rule (size 1), yet stride 2
    assert t.is_contiguous() and t.stride() == (2,)
    assert tensors.raw_bytes(t).tobytes() == bits(t).numpy().tobytes()
    out = through_the_wire(t)
    assert out.dtype == dtype and out.shape == t.shape and torch.equal(bits(out), bits(t))


# check_sendable: the reason and the remedy.

def test_a_tensor_off_the_cpu_is_refused_with_the_remedy():
    with pytest.raises(InvalidArgument, match=r"device meta: only CPU tensors travel; call \.cpu\(\) first"):
        tensors.encode(torch.empty(2, device="meta"), [])


def _mkldnn():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without mkldnn")
    return torch.randn(2, 2).to_mkldnn()


@pytest.mark.parametrize("make", [_mkldnn, lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)],
                                                                              layout=torch.jagged)],
                         ids=["mkldnn", "jagged"])
def test_a_layout_that_cannot_travel_is_refused_with_the_remedy(make):
    t = make()
    assert t.is_cpu
    with pytest.raises(InvalidArgument, match=r"only dense and sparse tensors travel; call \.to_dense\(\) first"):
        tensors.encode(t, [])


# Sparse tensors: their metadata, and compressed ones a peer made up.

@pytest.mark.parametrize("name", list(SPARSE))
@pytest.mark.parametrize("requires_grad", [False, True])
def test_sparse_metadata_tells_dtype_and_requires_grad(name, requires_grad):
    sent = SPARSE[name]().requires_grad_(requires_grad)
    meta = wire(tensors.encode(sent, []))
    assert tensors.dtype_from_name(meta.dtype) == sent.dtype
    assert meta.requires_grad == sent.requires_grad == requires_grad


@pytest.mark.parametrize("layout", ["csr", "csc", "bsr", "bsc"])
def test_compressed_sparse_keeps_its_size_past_its_last_index(layout):
    dense = torch.zeros(6, 8)
    dense[:2, :2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # rows and columns after the last stored one are empty
    sent = {"csr": lambda: dense.to_sparse_csr(), "csc": lambda: dense.to_sparse_csc(),
            "bsr": lambda: dense.to_sparse_bsr((2, 2)), "bsc": lambda: dense.to_sparse_bsc((2, 2))}[layout]()
    back = through_the_wire(sent)
    assert back.layout == sent.layout and back.shape == sent.shape == dense.shape
    assert torch.equal(back.to_dense(), dense)


@pytest.mark.parametrize("layout", ["csr", "csc"])
def test_compressed_sparse_indices_past_the_size_are_refused(layout):
    sent = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    sent = sent.to_sparse_csr() if layout == "csr" else sent.to_sparse_csc()
    attachments: list = []
    meta = tensors.encode(sent, attachments)
    meta.shape[1 if layout == "csr" else 0] = 1  # column (row) index 1 now lies past the end
    with pytest.raises(InvalidArgument, match="malformed sparse tensor"):
        tensors.decode(meta, attachments)


def test_a_sparse_tensor_with_the_wrong_number_of_parts_is_refused():
    attachments: list = []
    meta = tensors.encode(SPARSE["coo uncoalesced"](), attachments)
    meta.sparse.parts.append(tensors.encode(torch.ones(3), attachments))  # torch would ignore a third part
    with pytest.raises(InvalidArgument, match=r"malformed sparse tensor \(layout 'sparse_coo', 3 parts\)"):
        tensors.decode(meta, attachments)
    meta = tensors.encode(SPARSE["coo uncoalesced"](), attachments := [])
    meta.sparse.layout = "sparse_diagonal"
    with pytest.raises(InvalidArgument, match=r"malformed sparse tensor \(layout 'sparse_diagonal', 2 parts\)"):
        tensors.decode(meta, attachments)


def test_a_sparse_tensor_nested_in_its_parts_is_refused_in_plain_words():
    attachments: list = []
    meta = tensors.encode(torch.tensor([[0.0, 1.0]]).to_sparse_csr(), attachments)
    nested = pb.TensorMeta()
    nested.CopyFrom(meta)
    meta.sparse.parts[0].CopyFrom(nested)
    with pytest.raises(InvalidArgument, match=r"^malformed sparse tensor: its parts must be plain dense tensors$"):
        tensors.decode(meta, attachments)


# encode: the parameter flag and the refusal of packed views.

class Tagged(torch.Tensor):
    """A tensor subclass that is not a Parameter."""


def test_only_parameters_are_flagged_as_parameters():
    plain = torch.ones(2).as_subclass(Tagged)
    param = torch.nn.Parameter(torch.ones(2).as_subclass(Tagged))  # torch marks a subclass parameter with _is_param
    for t in (plain, param, torch.ones(2), torch.nn.Parameter(torch.ones(2))):
        assert tensors.encode(t, []).parameter == isinstance(t, torch.nn.Parameter)


def test_a_non_contiguous_packed_view_is_refused_with_the_remedy():
    q = torch.quantize_per_tensor(torch.randn(3, 4), 0.25, 1, torch.quint2x4).t()
    with pytest.raises(InvalidArgument, match="values are packed several to a byte and torch has no copy kernel to "
                                              "lay them out; send its base"):
        tensors.encode(q, [])


# Views: torch's RPC copies one whose storage is at least 8 KiB and twice its elements, else keeps its strides.
# Each base below is a whole storage, so the storage torch measures is exactly the memory the view reaches.

def torch_would_recopy(t):
    """The rule of torch's RPC (cloneSparseTensors in torch/csrc/distributed/rpc/utils.cpp)."""
    storage = t.untyped_storage().nbytes()
    return storage >= 8 * 1024 and storage >= 2 * t.element_size() * t.numel()


VIEWS = {
    "small, reaching three times its elements": lambda: torch.arange(10.0)[::3],
    "16 KiB transposed, reaching no more than it holds": lambda: torch.arange(4096.0).reshape(64, 64).t(),
    "exactly 8 KiB, reaching 4096 times its elements": lambda: torch.arange(8192).to(torch.uint8)[::8191],
    "one byte short of 8 KiB": lambda: torch.arange(8191).to(torch.uint8)[::8190],
    "16 KiB, reaching exactly twice its elements": lambda: torch.arange(4096.0).reshape(4, 1024)[::3],
    "16 KiB, reaching one element short of twice": lambda: torch.arange(4095.0).as_strided((2, 1024), (3071, 1)),
}


@pytest.mark.parametrize("name", list(VIEWS))
def test_views_keep_their_strides_unless_torch_would_copy_them(name):
    t = VIEWS[name]()
    assert not t.is_contiguous() and t.untyped_storage().nbytes() == t.element_size() * (
        1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + t.storage_offset())
    out = through_the_wire(t)
    assert torch.equal(out, t)
    if torch_would_recopy(t):
        assert out.is_contiguous()
    else:
        assert out.stride() == t.stride()


def test_conjugate_and_negative_views_keep_their_bits_and_strides_as_torchs_rpc():
    """torch's RPC (checked with 2.13 between two processes) keeps a view's conj and neg bits and, under
    its recopy rule, its strides: ``c.conj()[:, ::2]`` arrives conj, with strides (6, 2)."""
    c = torch.randn(4, 6, dtype=torch.complex64)
    for t in (c.conj(), c.conj()[:, ::2], c.t().conj(), torch._neg_view(c)[::2], torch._neg_view(c).t(),
              torch._neg_view(torch.randn(3, 4)), c.conj().imag):
        out = through_the_wire(t)
        assert (out.is_conj(), out.is_neg()) == (t.is_conj(), t.is_neg()), t
        assert out.stride() == t.stride() and torch.equal(out, t)


def test_a_conjugate_bit_on_a_real_tensor_or_a_negative_one_on_bools_is_refused():
    meta = wire(tensors.encode(torch.randn(3), attachments := []))
    meta.conj = True
    with pytest.raises(InvalidArgument, match="only complex ones do"):
        tensors.decode(meta, attachments)
    meta = wire(tensors.encode(torch.ones(3, dtype=torch.bool), attachments := []))
    meta.neg = True
    with pytest.raises(InvalidArgument, match="a bool tensor cannot carry the negative bit"):
        tensors.decode(meta, attachments)
    meta = wire(tensors.encode(torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.quint8), attachments := []))
    meta.neg = True
    with pytest.raises(InvalidArgument, match="a quint8 tensor cannot carry the negative bit"):
        tensors.decode(meta, attachments)


def test_a_plain_tensor_marked_a_parameter_by_hand_arrives_plain_as_torchs_rpc_sends_it():
    t = torch.ones(2)
    t._is_param = True  # isinstance(t, Parameter) now says yes; torch's RPC still sends a plain tensor
    assert isinstance(t, torch.nn.Parameter)
    out = through_the_wire(t)
    assert type(out) is torch.Tensor and not isinstance(out, torch.nn.Parameter)


# decode: zeros sent as a shape, and malformed messages.

@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.bool, torch.complex64, torch.bfloat16], ids=str)
def test_zeros_sent_as_a_shape_keep_their_dtype(dtype):
    t = torch.zeros(3, 2, dtype=dtype)
    attachments: list = []
    meta = tensors.encode(t, attachments, compact_zeros=True)
    assert meta.zeros and not attachments
    out = tensors.decode(wire(meta), attachments)
    assert out.dtype == dtype and torch.equal(out, t)


def test_strides_that_do_not_fit_the_shape_are_refused():
    data = bytes(16)  # four float32 elements, as many as the strides below would reach
    for shape, strides in (([3, 2], [-1, 5]), ([2, 3], [3])):  # else torch's as_strided would raise its own error
        meta = pb.TensorMeta(dtype="float32", shape=shape, strides=strides, attachment=0)
        with pytest.raises(InvalidArgument, match=r"tensor strides \[.*\] do not fit its shape"):
            tensors.decode(meta, [data])


def test_a_packed_tensor_with_strides_is_refused():
    attachments: list = []
    meta = tensors.encode(torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.quint4x2), attachments)
    meta.strides.append(1)
    with pytest.raises(InvalidArgument, match="a packed quint4x2 tensor cannot have strides"):
        tensors.decode(meta, attachments)


def test_a_size_mismatch_names_the_layout_it_expected():
    meta = pb.TensorMeta(dtype="float32", shape=[4], attachment=0)
    with pytest.raises(InvalidArgument, match=r"shape \[4\] and strides C order needs 16 bytes but 3 arrived"):
        tensors.decode(meta, [b"abc"])


def test_an_attachment_one_past_the_last_is_refused():
    with pytest.raises(InvalidArgument, match="refers to attachment 1 but the message has 1"):
        tensors.decode(pb.TensorMeta(dtype="uint8", shape=[1], attachment=1), [b"x"])


@pytest.mark.parametrize("dtype", [torch.quint4x2, torch.quint2x4, torch.quint8], ids=str)
@pytest.mark.parametrize("shape", [(0,), (0, 3)])
def test_empty_quantized_tensors_round_trip(dtype, shape):
    q = torch.quantize_per_tensor(torch.empty(shape), 0.5, 1, dtype)
    out = through_the_wire(q)
    assert out.dtype == dtype and out.shape == q.shape and out.qscheme() == q.qscheme()
    assert (out.q_scale(), out.q_zero_point()) == (q.q_scale(), q.q_zero_point())


# Quantization parameters a peer made up, and per-channel parameters of a tensor that is not first in its message.

def test_a_quantized_dtype_that_is_not_one_is_refused():
    attachments: list = []
    meta = tensors.encode(torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8), attachments)
    meta.quantization.dtype = "float32"
    with pytest.raises(InvalidArgument, match="float32 is not a quantized dtype"):
        tensors.decode(meta, attachments)


def _per_channel(axis=1):
    scales, zero_points = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), torch.tensor([1, 2, 3])
    return torch.quantize_per_channel(torch.randn(4, 3), scales, zero_points, axis, torch.quint8)


def test_a_per_channel_axis_past_the_last_dimension_is_refused():
    attachments: list = []
    meta = tensors.encode(_per_channel(), attachments)
    meta.quantization.axis = 2
    with pytest.raises(InvalidArgument, match=r"per-channel axis 2 does not fit a tensor of shape \[4, 3\]"):
        tensors.decode(meta, attachments)


def test_an_unknown_qscheme_is_refused():
    attachments: list = []
    meta = tensors.encode(_per_channel(), attachments)
    meta.quantization.qscheme = "per_tensor_symmetric"
    with pytest.raises(InvalidArgument, match="unknown qscheme 'per_tensor_symmetric'"):
        tensors.decode(meta, attachments)


def test_per_channel_parameters_are_read_from_their_own_attachments():
    first, q = torch.arange(6.0), _per_channel()  # the quantized tensor is the second of its message
    attachments: list = []
    metas = [wire(tensors.encode(t, attachments)) for t in (first, q)]
    received = [bytes(a) for a in attachments]
    assert torch.equal(tensors.decode(metas[0], received), first)
    out = tensors.decode(metas[1], received)
    assert torch.equal(out.int_repr(), q.int_repr())
    assert torch.equal(out.q_per_channel_scales(), q.q_per_channel_scales())
    assert torch.equal(out.q_per_channel_zero_points(), q.q_per_channel_zero_points())


def test_all_dtypes_lists_each_dtype_once_in_name_order():
    listed = tensors.all_dtypes()
    names = [str(d) for d in listed]
    assert names == sorted(names) and len(set(listed)) == len(listed)
    assert {torch.float32, torch.bfloat16, torch.complex32, torch.bool, torch.quint4x2, torch.uint64,
            torch.float8_e4m3fn} <= set(listed)
