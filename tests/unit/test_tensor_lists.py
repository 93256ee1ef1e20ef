"""The compiled tensor-list codec (encoding/tensor_lists.py, native/csrc/tensor_codec.cpp) against the
Python codec it stands in for: the same bytes out, the same tensors in (strides too), bit for bit, on
every common dtype and shape, and on views that keep their strides or go compact; every list it does
not take left to Python; and, on hostile Values, it never
returns what the Python codec would refuse or read differently. The inputs vary per run: the seed
is printed, and DISTAUTOGRAD_FUZZ_SEED replays one."""

from __future__ import annotations

import os
import random

import pytest
import torch
from google.protobuf.message import DecodeError

from distautograd import errors, native
from distautograd.encoding import tensor_lists, tensors
from distautograd.encoding.allowlist import Allowlist
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.codec import Codec
from tests.helpers.paths import take_path

pytestmark = pytest.mark.skipif(native.core is None, reason="the compiled core is not built")
SEED = int(os.environ.get("DISTAUTOGRAD_FUZZ_SEED", random.randrange(1 << 32)))
COMMON = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64, torch.complex128,
          torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]
LIMIT = 4 << 30  # the bytes of all-zero tensors a message may make (the default max_message_bytes)
SHAPES = [(), (0,), (1,), (5,), (3, 4), (2, 0, 3), (64, 512), (1, 1, 1, 7)]


def python_encode(items, compact_zeros):
    value, attachments = pb.Value(tensor_list=True), []
    for place, item in enumerate(items):
        if item is None:
            value.none_at.append(place)
        else:
            value.tensors.append(tensors.encode(item, attachments, compact_zeros))
    return value, attachments


def python_decode(value, attachments, monkeypatch):
    with monkeypatch.context() as patch:
        take_path(patch, "0")
        return Codec(None, None, None, LIMIT).decode(value, attachments, 0, None, rrefs=[])


def as_bytes(tensor):
    """What a tensor holds, bit for bit (NaN and -0.0 included), with its dtype, shape and strides."""
    flat = torch.empty(tensor.numel(), dtype=tensor.dtype).copy_(tensor.detach().reshape(-1))  # stride 1
    held = bytes(flat.view(torch.uint8).numpy()) if flat.numel() else b""
    return tensor.dtype, tuple(tensor.shape), tensor.stride(), held


def same(a, b):
    return [None if t is None else as_bytes(t) for t in a] == [None if t is None else as_bytes(t) for t in b]


def sample(dtype, shape, rng):
    if dtype == torch.bool:
        return torch.rand(shape, generator=rng) > 0.5
    if dtype.is_floating_point or dtype.is_complex:
        t = torch.randn(shape, dtype=torch.complex128 if dtype.is_complex else torch.float64, generator=rng)
        return t.to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, dtype=dtype, generator=rng)


@pytest.mark.parametrize("dtype", COMMON, ids=str)
@pytest.mark.parametrize("compact_zeros", [False, True])
def test_the_core_writes_the_bytes_the_python_codec_writes_and_reads_them_back_bit_for_bit(dtype, compact_zeros,
                                                                                           monkeypatch):
    rng = torch.Generator().manual_seed(SEED)
    items = [sample(dtype, shape, rng) for shape in SHAPES]
    items += [None, torch.zeros(3, 2, dtype=dtype), None]
    if dtype.is_floating_point:
        items += [torch.tensor([-0.0, 0.0], dtype=dtype), torch.tensor([0.0, float("nan")], dtype=dtype)]
    value, attachments = tensor_lists.encode(items, compact_zeros)
    want, want_attachments = python_encode(items, compact_zeros)
    assert value.SerializeToString() == want.SerializeToString()
    assert [bytes(memoryview(a)) for a in attachments] == [bytes(memoryview(a).cast("B")) for a in want_attachments]
    received = [bytearray(memoryview(a)) for a in attachments]
    decoded = tensor_lists.decode(value, received, LIMIT)
    assert decoded is not None and same(decoded, python_decode(want, received, monkeypatch))
    if not compact_zeros:
        assert same(decoded, items)


def _views(dtype, rng):
    """Views that are not contiguous, as gradients often are: an expanded one (the gradient of a sum),
    transposed, sliced with an offset, a column, a permuted one, a 0-element one, and two that reach
    so much memory beyond their elements that torch's rule sends them compact."""
    base = sample(dtype, (40, 30), rng)
    return [
        torch.ones((), dtype=dtype).expand(64, 512),
        sample(dtype, (1, 7), rng).expand(3, 7),
        base.t(),
        base[2:9, 3:20],
        base[:, 5],
        sample(dtype, (2, 3, 4), rng).permute(2, 0, 1),
        base[:, :0],
        sample(dtype, (300, 300), rng)[::3, ::7],  # reaches 89,394 elements for its 4,300
        sample(dtype, (4096, 4), rng)[:, 0],  # 16,381 for 4,096
    ]


@pytest.mark.parametrize("dtype", COMMON, ids=str)
@pytest.mark.parametrize("compact_zeros", [False, True])
def test_views_keep_their_strides_or_go_compact_as_in_the_python_codec(dtype, compact_zeros, monkeypatch):
    rng = torch.Generator().manual_seed(SEED)
    items = _views(dtype, rng) + [torch.zeros((), dtype=dtype).expand(5, 6), torch.zeros(6, 4, dtype=dtype).t()]
    coded = tensor_lists.encode(items, compact_zeros)
    assert coded is not None, "the core left views to the Python codec"
    value, attachments = coded
    want, want_attachments = python_encode(items, compact_zeros)
    assert value.SerializeToString() == want.SerializeToString()
    assert [bytes(memoryview(a)) for a in attachments] == [bytes(memoryview(a).cast("B")) for a in want_attachments]
    assert len(memoryview(attachments[0])) == dtype.itemsize  # an expanded gradient travels as its one element
    assert list(value.tensors[0].strides) == [0, 0] and not value.tensors[7].strides  # kept; compact
    received = [bytearray(memoryview(a)) for a in attachments]
    decoded = tensor_lists.decode(value, received, LIMIT)
    assert decoded is not None and same(decoded, python_decode(want, received, monkeypatch))
    assert decoded[0].stride() == (0, 0) and decoded[2].stride() == (1, 30)
    for got, sent in zip(decoded, items):
        assert torch.equal(got, sent) or (got.is_floating_point() and torch.equal(got.isnan(), sent.isnan()))


@pytest.mark.parametrize("shape,strides,nbytes", [
    ([3, 4], [4], 48),  # a stride short
    ([3], [1, 1], 12),  # one too many
    ([3, 4], [-4, 1], 48),  # negative
    ([2, 0], [1, 1], 8),  # no elements: strides mean nothing, and the Python codec refuses them
    ([3, 4], [1 << 62, 1], 48),  # a span past any memory
    ([1 << 40, 1 << 40], [1 << 40, 1], 4),  # a span that wraps 64 bits
    ([3, 4], [4, 1], 44),  # the span's 48 bytes, less one element
    ([3, 4], [0, 1], 48),  # an expanded row, with more bytes than it reaches
])
def test_strides_that_do_not_fit_are_left_to_the_python_codec_which_refuses_them(shape, strides, nbytes, monkeypatch):
    value = pb.Value(tensor_list=True)
    value.tensors.add(dtype="float32", shape=shape, strides=strides)
    received = [bytearray(nbytes)]
    assert native.core.decode_tensor_list(value.SerializeToString(), received, LIMIT) is None
    with pytest.raises(errors.InvalidArgument, match="strides"):
        python_decode(value, received, monkeypatch)


def test_a_decoded_tensor_holds_its_bytes_until_it_is_gone():
    value, attachments = tensor_lists.encode([torch.arange(6.0)], False)
    received = bytearray(memoryview(attachments[0]))
    (tensor,) = tensor_lists.decode(value, [received], LIMIT)
    tensor[0] = 7.0  # writable, and over the received memory: no copy
    assert torch.frombuffer(received, dtype=torch.float32)[0] == 7.0
    with pytest.raises(BufferError):
        received.extend(b"x")  # the bytes cannot move while the tensor lives
    del tensor
    received.extend(b"x")


def test_the_attachments_keep_the_sent_tensor_alive():
    value, attachments = tensor_lists.encode([torch.arange(4.0) * 2], False)
    assert bytes(memoryview(attachments[0])) == bytes(torch.arange(4.0).mul(2).numpy())


UNSENT_REFUSED = (r"all-zero tensors and expanded views would take more than the \d+ bytes this process still allows it "
                  r"\(max_message_bytes\)")


def test_all_zero_tensors_a_message_asks_for_stay_within_max_message_bytes(path):
    """They travel as a shape alone: a few bytes from a peer must not make gigabytes. The limit is
    on their sum, so many small ones are held to it as one big one (on each path: conftest's ``path``)."""
    codec = Codec(None, None, None, 4096)
    fits, _ = python_encode([torch.zeros(512, dtype=torch.float64)], True)  # 4096 bytes
    assert same(codec.decode(fits, [], 0, None, rrefs=[]), [torch.zeros(512, dtype=torch.float64)])
    for shapes in ([[1 << 40]], [[600], [600]], [[400, 3]], [[1 << 31, 1 << 31, 1 << 31]]):
        value = pb.Value(tensor_list=True)
        for shape in shapes:
            value.tensors.add(dtype="float32", shape=shape, zeros=True)
        with pytest.raises(errors.InvalidArgument, match=UNSENT_REFUSED):
            codec.decode(value, [], 0, None, rrefs=[])
    sparse = pb.Value(tensor_list=True)
    sparse.tensors.add(dtype="float32", shape=[10], sparse=pb.Sparse(layout="sparse_coo", parts=[
        pb.TensorMeta(dtype="int64", shape=[1, 1 << 40], zeros=True), pb.TensorMeta(dtype="float32", shape=[1 << 40], zeros=True)]))
    with pytest.raises(errors.InvalidArgument, match=UNSENT_REFUSED):
        codec.decode(sparse, [], 0, None, rrefs=[])  # the parts of a sparse tensor too


def test_expanded_views_a_message_asks_for_stay_within_max_message_bytes_with_its_zeros(path):
    """An expanded view travels as the elements it reaches: 4 bytes could describe 2^62 elements,
    which torch would then sum down to the tensor's shape. What its elements take beyond the bytes
    that came counts against the same limit as all-zero tensors; a view whose elements all came (a
    transposed one) takes nothing from it."""
    codec = Codec(None, None, None, 4096)
    expanded = torch.tensor(2.0).expand(32, 32)  # 4,096 bytes of elements, 4 sent: 4,092 unsent
    transposed = torch.arange(4096.0).reshape(64, 64).t()  # 16 KiB, all of it sent
    value, attachments = python_encode([expanded, transposed], False)
    received = [bytearray(memoryview(a).cast("B")) for a in attachments]
    assert list(value.tensors[0].strides) == [0, 0] and list(value.tensors[1].strides) == [1, 64]
    assert same(codec.decode(value, received, 0, None, rrefs=[]), [expanded, transposed])
    for extra in (pb.TensorMeta(dtype="float32", shape=[2], zeros=True),  # 8 bytes more: 4,100 in all
                  pb.TensorMeta(dtype="float32", shape=[3], strides=[0], attachment=2)):  # 8 unsent
        more = pb.Value()
        more.CopyFrom(value)
        more.tensors.append(extra)
        with pytest.raises(errors.InvalidArgument, match=UNSENT_REFUSED):
            codec.decode(more, received + [bytearray(4)], 0, None, rrefs=[])
    huge = pb.Value(tensor_list=True)
    huge.tensors.add(dtype="float32", shape=[1 << 31, 1 << 31], strides=[0, 0])
    with pytest.raises(errors.InvalidArgument, match=UNSENT_REFUSED):
        codec.decode(huge, [bytearray(4)], 0, None, rrefs=[])


def _others():
    complex_ = torch.randn(3, dtype=torch.complex64)
    return {
        "requires grad": torch.ones(2, requires_grad=True),
        "a Parameter": torch.nn.Parameter(torch.ones(2)),
        "a subclass": torch.ones(2).as_subclass(type("Sub", (torch.Tensor,), {})),
        "a conjugate view": complex_.conj(),
        "a negative view": torch._neg_view(complex_),
        "sparse": torch.ones(2).to_sparse(),
        "quantized": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8),
        "an uncommon dtype": torch.ones(2, dtype=torch.uint16),
        "a float8": torch.ones(2).to(torch.float8_e4m3fn),
    }


@pytest.mark.parametrize("case", list(_others()))
def test_anything_but_a_plain_tensor_is_left_to_the_python_codec(case):
    assert tensor_lists.encode([torch.ones(1), _others()[case]], True) is None


def test_told_not_to_the_core_codes_nothing(monkeypatch):
    take_path(monkeypatch, "0")
    assert tensor_lists.encode([torch.ones(1)], False) is None
    value, attachments = python_encode([torch.ones(1)], False)
    assert tensor_lists.decode(value, [bytearray(memoryview(a).cast("B")) for a in attachments], LIMIT) is None


def _hostile(rng: random.Random):
    """A Value a peer could send: a real list's, then a field or two set to what it should not be,
    or its bytes changed at random; and the attachments, sometimes of the wrong size or kind."""
    items = [None if rng.random() < 0.2 else sample(rng.choice(COMMON), rng.choice(SHAPES[:6]),
                                                   torch.Generator().manual_seed(rng.randrange(1 << 30)))
             for _ in range(rng.randrange(4))]
    value, attachments = python_encode(items, rng.random() < 0.5)
    received = [bytearray(memoryview(a).cast("B")) for a in attachments]
    for _ in range(rng.randrange(3)):
        meta = rng.choice(value.tensors) if value.tensors else None
        change = rng.randrange(12)
        if meta is not None and change == 0:
            meta.shape.append(rng.choice([-1, 0, 2, 1 << 40, -(1 << 62)]))
        elif meta is not None and change == 1:
            meta.attachment = rng.randrange(5)
        elif meta is not None and change == 2:
            meta.dtype = rng.choice(["float32", "uint16", "qint8", "", "float", "int64 "])
        elif meta is not None and change == 3:
            setattr(meta, rng.choice(["requires_grad", "parameter", "zeros", "conj", "neg", "activates_unknown"]), True)
        elif meta is not None and change == 4:
            count = len(meta.shape) + rng.choice([0, 0, 0, -1, 1])
            meta.strides.extend(rng.choice([0, 1, 2, 3, -1, 1 << 40, 1 << 62]) for _ in range(max(count, 0)))
        elif meta is not None and change == 5:
            meta.autograd_message_id = rng.randrange(1, 1 << 40)
        elif change == 6:
            value.none_at.append(rng.randrange(6))
        elif change == 7:
            value.tensor_list = False
        elif change == 8:
            value.pickle = b"\x80\x04N."
        elif change == 9 and received:
            place = rng.randrange(len(received))
            received[place] = type(received[place])(received[place] + b"\x00" * rng.randrange(1, 9))
        elif change == 10 and received:
            place = rng.randrange(len(received))
            received[place] = bytes(received[place])
        elif change == 11:
            value.tensors.add(dtype="float32", shape=[1], sparse=pb.Sparse(layout="sparse_coo"))
    data = value.SerializeToString()
    if rng.random() < 0.3 and data:
        data = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data)
    return data, received


def _against_python(core_decode, python_decode_of) -> tuple:
    """Hostile Values through ``core_decode(bytes, attachments, limit)`` and ``python_decode_of(value,
    attachments)``: what the Python codec refuses the core never takes, and what the core takes reads
    the same; (taken, refused)."""
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    taken = refused = 0
    for _ in range(3000):
        data, received = _hostile(rng)
        try:
            value = pb.Value.FromString(data)
        except DecodeError:
            continue  # the frame it came in would not have parsed: it never gets here
        got = core_decode(value.SerializeToString(), received, LIMIT)
        try:
            want = python_decode_of(value, received)
        except (errors.InvalidArgument, RuntimeError, ValueError, TypeError, OverflowError):
            assert got is None, (SEED, value)
            refused += 1
            continue
        if got is not None:
            assert same(got, want), (SEED, value)
            taken += 1
    return taken, refused


def test_on_hostile_values_the_core_takes_only_what_the_python_codec_reads_the_same(monkeypatch):
    taken, refused = _against_python(native.core.decode_tensor_list,
                                     lambda value, received: python_decode(value, received, monkeypatch))
    print(f"{taken} lists the core took, {refused} the Python codec refused")
    assert taken > 300 and refused > 300  # both kinds were really tried


def python_tensors(value, received):
    """Each tensor of a Value as the Python codec makes it (Codec._tensors, without the autograd bits)."""
    unsent = tensors.UnsentBudget(LIMIT)
    return [tensors.decode(meta, received, unsent) for meta in value.tensors]


def test_a_pickled_values_tensors_are_made_as_the_python_codec_makes_them_whatever_their_autograd_bits():
    rng = torch.Generator().manual_seed(SEED % (1 << 31))
    items = [sample(dtype, shape, rng) for dtype in COMMON for shape in SHAPES[:5]]
    items += [torch.arange(60.).reshape(6, 10)[:, ::3], torch.zeros(3, 4), torch.ones(1).expand(30, 40)]
    value, attachments = python_encode(items, compact_zeros=True)
    value.tensor_list, value.pickle = False, b"\x80\x04N."  # as a call's: a pickle naming its tensors
    value.rrefs.add(rref_id=5, owner=1, fork_id=6)
    for place, meta in enumerate(value.tensors):
        if place % 3 == 0:
            meta.requires_grad, meta.autograd_message_id = True, 1000 + place
            meta.activates.extend([7, 8])
        elif place % 3 == 1:
            meta.parameter, meta.activates_unknown = True, True
    received = [bytearray(memoryview(a).cast("B")) for a in attachments]
    made = native.core.decode_value_tensors(value.SerializeToString(), received, LIMIT)
    assert made is not None and same(made, python_tensors(value, received))
    assert not any(t.requires_grad for t in made)  # the bits are the caller's to apply


@pytest.mark.parametrize("bit", ["quantization", "sparse", "conj", "neg"])
def test_a_value_with_a_tensor_that_is_not_plain_dense_is_left_to_the_python_codec(bit):
    value, attachments = python_encode([torch.ones(2), torch.ones(3)], False)
    value.tensor_list = False
    meta = value.tensors[1]
    if bit == "quantization":
        meta.quantization.dtype = "qint8"
    elif bit == "sparse":
        meta.sparse.layout = "sparse_coo"
    else:
        setattr(meta, bit, True)
    received = [bytearray(memoryview(a).cast("B")) for a in attachments]
    assert native.core.decode_value_tensors(value.SerializeToString(), received, LIMIT) is None


def test_on_hostile_values_the_core_makes_only_tensors_the_python_codec_makes_the_same():
    taken, refused = _against_python(native.core.decode_value_tensors, python_tensors)
    print(f"{taken} values whose tensors the core made, {refused} the Python codec refused")
    assert taken > 300 and refused > 300  # both kinds were really tried


def test_a_call_with_autograd_tensors_decodes_alike_on_both_paths(monkeypatch):
    """Codec.decode end to end, on a value with a Parameter and a tensor that requires grad (no context:
    no recv points), on the native path and on Python's."""
    param = torch.nn.Parameter(torch.randn(3, 2))
    plain, grad = torch.randn(4), torch.randn(2, 2, requires_grad=True)
    codec = Codec(Allowlist(), None, None, LIMIT)
    value, attachments = codec.encode((param, plain, grad, {"k": plain}), 1, None)
    received = [bytearray(memoryview(a).cast("B")) for a in attachments]
    got = codec.decode(value, received, 0, None, rrefs=[])
    with monkeypatch.context() as patch:
        take_path(patch, "0")
        want = Codec(Allowlist(), None, None, LIMIT).decode(value, received, 0, None, rrefs=[])
    assert same(list(got[:3]), list(want[:3])) and got[3]["k"] is got[1]
    assert type(got[0]) is torch.nn.Parameter and got[0].requires_grad and not got[1].requires_grad
    assert got[2].requires_grad and type(got[2]) is torch.Tensor


def test_a_values_tensors_are_described_as_the_python_codec_describes_them_autograd_bits_too():
    rng = torch.Generator().manual_seed(SEED % (1 << 31))
    items = [sample(dtype, shape, rng) for dtype in COMMON for shape in SHAPES[:5]]
    items += [torch.arange(60.).reshape(6, 10)[:, ::3], torch.zeros(3, 4), torch.ones(1).expand(30, 40),
              torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2), requires_grad=False),
              torch.randn(2, 3, requires_grad=True), torch.zeros(4, requires_grad=True),
              torch.randn(8, 8, requires_grad=True)[:, ::2]]
    for compact_zeros in (False, True):
        coded = tensor_lists.encode_tensors(items, compact_zeros)
        assert coded is not None
        value, attachments = coded
        want, expected = [], []
        for item in items:
            want.append(tensors.encode(item, expected, compact_zeros))
        assert list(value.tensors) == want and not value.pickle and not value.tensor_list
        assert [bytes(memoryview(a).cast("B")) for a in attachments] == [bytes(memoryview(a).cast("B")) for a in expected]


@pytest.mark.parametrize("case", [case for case in _others() if case not in ("requires grad", "a Parameter")])
def test_a_value_with_a_tensor_the_core_cannot_describe_is_left_to_the_python_codec(case):
    assert tensor_lists.encode_tensors([torch.ones(1), _others()[case]], True) is None
