"""A backward's push read by the compiled core straight off a frame's header (native/csrc/push_reading.cpp)
against protobuf's parse of the same bytes: every push in the common case read as protobuf reads it,
whatever its ids, plan, gradients and parts done; every frame that is not the common case, and every
hostile variation protobuf would read otherwise, left to the Python path; and, over real socket pairs,
the push a socket transport reads reaches the push handler with the gradients that were sent, on both
paths. The inputs vary per run: the seed is printed, and DISTAUTOGRAD_FUZZ_SEED replays one."""

from __future__ import annotations

import os
import random
import threading

import pytest
import torch
from google.protobuf.message import DecodeError

from distautograd import native
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import frames
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.dispatch import Dispatcher
from distautograd.transport.link import Link
from distautograd.transport.pushes import ArrivedPush
from distautograd.transport.sockets import SocketTransport
from tests.helpers.paths import take_path
from tests.helpers.protobuf_bytes import field, varint
from tests.helpers.pushes import codec, protobuf_push, random_push
from tests.helpers.socket_pairs import pair

pytestmark = pytest.mark.skipif(native.core is None, reason="the compiled core is not built")
SEED = int(os.environ.get("DISTAUTOGRAD_FUZZ_SEED", random.randrange(1 << 32)))



def frame_of(request: pb.Request, sizes=()) -> bytes:
    request = pb.Request.FromString(request.SerializeToString())
    request.attachments.streamed_sizes.extend(sizes)
    return pb.Frame(request=request).SerializeToString()


def as_protobuf_reads_it(header: bytes):
    """What read_push should give for ``header``: its push's fields as protobuf parses them, or None
    where the frame is not the common case at the protocol level (the gradients are checked apart)."""
    frame = pb.Frame.FromString(header)
    request = frame.request
    if (frame.id or frame.WhichOneof("kind") != "request" or request.WhichOneof("body") != "push_gradients"
            or request.timeout or request.attachments.inline or request.attachments.shared):
        return None
    push = request.push_gradients
    return (push.context_id, push.pass_id, push.root, list(push.message_ids),
            [(entry.rank, entry.leaves) for entry in push.done],
            push.plan if push.HasField("plan") else None, push.gradients)


def parsed(read: tuple) -> tuple:
    """read_push's tuple with its plan and gradients parsed, to compare with as_protobuf_reads_it."""
    plan = None if read[5] is None else pb.PassPlan.FromString(read[5])
    return (*read[:5], plan, pb.Value.FromString(read[6]))


def test_the_core_reads_a_push_as_protobuf_parses_it(capsys):
    print(f"DISTAUTOGRAD_FUZZ_SEED={SEED}")
    rng = random.Random(SEED)
    for _ in range(300):
        args = random_push(rng)
        request = protobuf_push(*args)
        sizes = [rng.randrange(1 << 20) for _ in range(rng.randrange(4))]
        header = frame_of(request, sizes)
        read = native.core.read_push(header)
        assert read is not None, args
        assert parsed(read) == as_protobuf_reads_it(header), args
        push = request.push_gradients
        assert read[5] == (push.plan.SerializeToString() if push.HasField("plan") else None)  # the bytes themselves
        assert read[6] == push.gradients.SerializeToString()


def test_a_push_the_core_wrote_is_read_back_by_it():
    grads = [torch.randn(3, 4), None, torch.zeros(2)]
    serialized, attachments = codec().encode_push(9, 4, b"", [1, 2, 3], grads, 1, [(2, 1)])
    header = pb.Frame(request=pb.Request.FromString(serialized)).SerializeToString()
    context_id, pass_id, root, ids, done, plan, gradients = native.core.read_push(header)
    assert (context_id, pass_id, root, ids, done, plan) == (9, 4, 1, [1, 2, 3], [(2, 1)], b"")
    decoded = codec().decode(gradients, attachments, 0, None)
    assert torch.equal(decoded[0], grads[0]) and decoded[1] is None and torch.equal(decoded[2], grads[2])


def push_body(**fields) -> bytes:
    return protobuf_push(5, 6, fields.pop("plan", None), [1], [torch.ones(2)], 0, []).push_gradients.SerializeToString()


def request_with_body(body: bytes, before: bytes = b"") -> bytes:
    return field(2, before + field(33, body))


GRADIENTS = pb.PushGradients(gradients=codec().encode([torch.ones(2)], 0, None)[0]).SerializeToString()


@pytest.mark.parametrize("header", [
    pb.Frame(id=3, request=protobuf_push(5, 6, None, [1], [torch.ones(2)], 0, [])).SerializeToString(),
    pb.Frame(request=pb.Request(timeout=1.5, push_gradients=protobuf_push(5, 6, None, [1], [torch.ones(2)], 0, [])
                                .push_gradients)).SerializeToString(),
    pb.Frame(request=pb.Request(attachments=pb.Attachments(inline=[b"x"]),
                                push_gradients=protobuf_push(5, 6, None, [1], [torch.ones(2)], 0, [])
                                .push_gradients)).SerializeToString(),
    pb.Frame(request=pb.Request(attachments=pb.Attachments(streamed_sizes=[8], shared={0: pb.SharedBuffer(segment=1)}),
                                push_gradients=protobuf_push(5, 6, None, [1], [torch.ones(2)], 0, [])
                                .push_gradients)).SerializeToString(),
    pb.Frame(request=pb.Request(pass_finished=pb.PassFinished(context_id=5))).SerializeToString(),
    pb.Frame(response=pb.Response(empty=pb.Empty())).SerializeToString(),
    request_with_body(push_body()) + request_with_body(push_body()),  # a request twice: protobuf merges them
    field(2, field(33, push_body()) + field(33, push_body())),  # the push twice
    request_with_body(push_body(plan=pb.PassPlan(root=1)) + field(3, b"")),  # the plan twice, the second empty
    request_with_body(push_body(plan=pb.PassPlan(root=1)) + field(3, b"\x08\x02")),  # the plan twice
    request_with_body(push_body() + GRADIENTS),  # the gradients twice
    request_with_body(push_body() + b"\x48\x01"),  # a field this protocol's push does not have
    request_with_body(push_body() + field(3, b"\x40\x01")),  # a plan with a field PassPlan does not have
    request_with_body(push_body() + field(3, field(1, b""))),  # a plan's field of another wire type
    request_with_body(push_body() + field(7, b"\x18\x01")),  # a part done with a field PartDone does not have
    request_with_body(push_body() + field(7, field(1, b""))),  # a part done's rank of another wire type
    request_with_body(push_body() + field(1, b"")),  # the context id of another wire type
    request_with_body(push_body() + b"\x20\x02"),  # two ids, one gradient
    request_with_body(pb.PushGradients(context_id=5, message_ids=[1]).SerializeToString()),  # no gradients
    request_with_body(pb.PushGradients(context_id=5, message_ids=[1], gradients=pb.Value(
        pickle=b"x", tensor_list=True)).SerializeToString()),  # not a plain list
    request_with_body(pb.PushGradients(context_id=5, message_ids=[1], gradients=pb.Value(tensor_list=True, tensors=[
        pb.TensorMeta(dtype="float32", shape=[1], requires_grad=True)])).SerializeToString()),  # not a plain tensor
    request_with_body(push_body(), before=b"\x0b\x0c"),  # a group, which protobuf skips as unknown
], ids=["frame-id", "timeout", "inline", "shared", "another-body", "response", "request-twice", "push-twice",
        "plan-twice-one-empty", "plan-twice", "gradients-twice", "unknown-push-field", "unknown-plan-field",
        "plan-wire-type", "unknown-done-field", "done-wire-type", "context-wire-type", "ids-outnumber-gradients",
        "no-gradients", "pickled-gradients", "requires-grad", "group"])
def test_what_is_not_the_common_case_is_left_to_the_python_path(header):
    assert native.core.read_push(header) is None


def padded(varint_bytes: bytes, to: int) -> bytes:
    """The same varint written in ``to`` bytes."""
    groups = [b & 0x7F for b in varint_bytes]
    groups += [0] * (to - len(groups))
    return bytes(g | 0x80 for g in groups[:-1]) + bytes([groups[-1]])


@pytest.mark.parametrize("width", [5, 6])
@pytest.mark.parametrize("where", ["tag", "length"])
def test_a_tag_or_length_in_more_than_five_bytes_is_refused_as_protobuf_refuses_it(where, width):
    tag, length = varint(33 << 3 | 2), varint(len(push_body()))
    if where == "tag":
        tag = padded(tag, width)
    else:
        length = padded(length, width)
    header = field(2, tag + length + push_body())
    if width == 5:  # protobuf's readers take five bytes: so does the core, alike
        assert parsed(native.core.read_push(header)) == as_protobuf_reads_it(header)
        return
    with pytest.raises(DecodeError):
        pb.Frame.FromString(header)
    assert native.core.read_push(header) is None


def test_a_dtype_set_twice_is_left_to_protobuf_which_checks_the_first_too():
    meta = pb.TensorMeta(dtype="float32", shape=[2]).SerializeToString()

    def header(meta_bytes: bytes) -> bytes:
        value = b"\x20\x01" + field(2, meta_bytes)  # Value{tensor_list: true, tensors: [meta]}
        return request_with_body(pb.PushGradients(context_id=5, message_ids=[1]).SerializeToString() + field(5, value))

    assert native.core.read_push(header(meta)) is not None  # once: the common case
    twice = header(field(1, b"\xff\xfe") + meta)
    with pytest.raises(DecodeError):
        pb.Frame.FromString(twice)  # the first is not UTF-8
    assert native.core.read_push(twice) is None


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        where = rng.randrange(len(data) + 1)
        kind = rng.randrange(5)
        if kind == 0 and data:
            data[min(where, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            del data[where:]
        elif kind == 2:
            data[where:where] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5)))
        elif kind == 3:
            data[where:where] = rng.choice(  # an unknown field, a plan, a part done, an id, a context id
                [b"\x48\x01", field(3, b""), field(7, b"\x08\x01"), b"\x20\x07", b"\x08\x05"])
        else:  # a varint's last byte (any byte below 0x80) padded to 5 or 6 bytes
            ends = [i for i, b in enumerate(data) if b < 0x80]
            if ends:
                at = rng.choice(ends)
                data[at:at + 1] = bytes([data[at] | 0x80]) + b"\x80" * rng.randrange(3, 5) + b"\x00"
    return bytes(data)


def test_on_hostile_bytes_the_core_takes_only_what_protobuf_reads_alike(capsys):
    """Every variation of a push the core takes, protobuf parses to the same push (its gradients a list
    of one plain tensor or None per id); what it does not take, the Python path reads (or refuses)."""
    print(f"DISTAUTOGRAD_FUZZ_SEED={SEED}")
    rng = random.Random(SEED)
    taken = 0
    for _ in range(3000):
        args = random_push(rng)
        header = mutate(rng, frame_of(protobuf_push(*args), [rng.randrange(1 << 10) for _ in range(rng.randrange(3))]))
        read = native.core.read_push(header)
        if read is None:
            continue
        taken += 1
        expected = as_protobuf_reads_it(header)  # raises DecodeError if protobuf refuses what the core took
        assert expected is not None and parsed(read) == expected, header
        gradients = expected[6]
        assert gradients.tensor_list and not gradients.pickle and not gradients.rrefs
        assert len(gradients.tensors) + len(gradients.none_at) == len(expected[3])
    assert taken > 30, taken  # some variations left a push whole, or changed it in ways both read alike


def read_one(family: str, header_and_attachments, monkeypatch) -> object:
    """What a native reader returns for one frame written by the core's writer over a real socket pair."""
    take_path(monkeypatch, "1")
    a, b = pair(family)
    try:
        request, attachments = header_and_attachments
        frames.write_frame(a, 0, "request", request, attachments, [], None)
        return frames.reader_for(b).read_frame(1 << 20)
    finally:
        a.close(), b.close()


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_over_a_socket_the_core_reads_a_push_with_its_attachments(family, monkeypatch):
    grads = [torch.randn(3, 4), None, torch.randn(5)]
    serialized, attachments = codec().encode_push(9, 4, None, [1, 2, 3], grads, 1, [])
    request = pb.Request.FromString(serialized)
    request.attachments.streamed_sizes.extend(memoryview(a).nbytes for a in attachments)
    read = read_one(family, (request, attachments), monkeypatch)
    assert isinstance(read, ArrivedPush)
    assert (read.context_id, read.pass_id, read.root, read.message_ids, read.done, read.plan()) == (9, 4, 1, [1, 2, 3],
                                                                                                   [], None)
    assert read.following == 48 + 20 and pb.Frame.FromString(read.header).request == request
    decoded = codec().decode(read.gradients, read.attachments, 0, None)
    assert torch.equal(decoded[0], grads[0]) and decoded[1] is None and torch.equal(decoded[2], grads[2])


def test_over_a_socket_a_frame_that_is_not_a_push_is_read_as_a_frame(monkeypatch):
    request = pb.Request(pass_finished=pb.PassFinished(context_id=5))
    frame, streamed, following = read_one("unix", (request, []), monkeypatch)
    assert frame.request == request and streamed == [] and following == 0


class Handler:
    """A push_gradients handler that keeps what it was given; set() once it has one."""

    def __init__(self):
        self.arrived = threading.Event()
        self.got = None

    def __call__(self, link, body, attachments):
        self.got = (body, attachments)
        self.arrived.set()


@pytest.mark.parametrize("path", ["1", "0"])
def test_a_socket_transport_hands_a_push_to_its_handler_on_both_paths(path, monkeypatch):
    """On the core's path the handler gets the ArrivedPush, on the Python path the protobuf push; the
    gradients decode to those sent either way."""
    take_path(monkeypatch, path)
    grads = [torch.randn(3, 4), torch.zeros(2)]
    handler = Handler()
    dispatcher = Dispatcher("receiver", {"push_gradients": (handler, True)})
    a, b = pair("unix")
    sender = SocketTransport(Link("receiver", lambda *frame: None, Deadlines()), a, None)
    receiver = SocketTransport(Link("sender", dispatcher, Deadlines()), b, None)
    try:
        receiver.start()
        request = protobuf_push(9, 4, pb.PassPlan(root=1), [1, 2], grads, 1, [(3, 2)])
        attachments = codec().encode(grads, 0, None, compact_zeros=True)[1]
        sender.send(0, "request", request, attachments)
        assert handler.arrived.wait(10)
        body, received = handler.got
        assert isinstance(body, ArrivedPush if path == "1" else pb.PushGradients)
        assert (body.context_id, body.pass_id, body.root, list(body.message_ids)) == (9, 4, 1, [1, 2])
        assert [(entry.rank, entry.leaves) for entry in body.done] == [(3, 2)]
        decoded = codec().decode(body.gradients, received, 0, None)
        assert all(torch.equal(x, y) for x, y in zip(decoded, grads))
    finally:
        sender.close(), receiver.close()


def test_a_link_whose_handler_takes_only_frames_gets_the_push_as_its_frame(monkeypatch):
    take_path(monkeypatch, "1")
    got = []
    link = Link("sender", lambda link, frame_id, request, attachments: got.append((frame_id, request)), Deadlines())
    request = protobuf_push(9, 4, None, [1], [torch.ones(2)], 1, [])
    header = pb.Frame(request=request).SerializeToString()
    link.deliver_push(ArrivedPush(header, [], 0, native.core.read_push(header)))
    assert got == [(0, request)]
