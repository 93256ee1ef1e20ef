"""A backward's push written by the compiled core in one call (native/csrc/push_request.cpp, through
Codec.encode_push) against the protobuf messages the Python path builds: the same bytes, whatever the
ids, plan, gradients and parts done; every list of gradients the core does not take left to the
Python path; and, on real socket pairs, the frame a socket transport sends of the core's push is the
frame it sends of the protobuf one (a gradient in shared memory too). The inputs vary per run: the seed is printed, and
DISTAUTOGRAD_FUZZ_SEED replays one."""

from __future__ import annotations

import array
import os
import random
import socket

import pytest
import torch

from distautograd import native
from distautograd.encoding import tensor_lists
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import framing, shm
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.link import Link, Serialized
from distautograd.transport.sockets import SocketTransport
from tests.helpers.paths import take_path
from tests.helpers.pushes import codec, protobuf_push, random_push
from tests.helpers.socket_pairs import pair

pytestmark = pytest.mark.skipif(native.core is None, reason="the compiled core is not built")
SEED = int(os.environ.get("DISTAUTOGRAD_FUZZ_SEED", random.randrange(1 << 32)))


def test_the_core_writes_a_push_as_protobuf_does(capsys):
    print(f"DISTAUTOGRAD_FUZZ_SEED={SEED}")
    rng = random.Random(SEED)
    for _ in range(300):
        args = random_push(rng)
        plan, grads = args[2], args[4]
        coded = codec().encode_push(*args[:2], None if plan is None else plan.SerializeToString(), *args[3:])
        assert coded is not None
        request, attachments = coded
        expected = protobuf_push(*args)
        assert request == expected.SerializeToString(), args
        assert [bytes(memoryview(a).cast("B")) for a in attachments] == [
            bytes(memoryview(a).cast("B")) for a in codec().encode(grads, 0, None, compact_zeros=True)[1]]


def test_a_plan_that_serializes_to_nothing_still_rides_along():
    request, _ = codec().encode_push(1, 2, b"", [5], [torch.ones(2)], 0, [])
    assert pb.Request.FromString(request).push_gradients.HasField("plan")
    request, _ = codec().encode_push(1, 2, None, [5], [torch.ones(2)], 0, [])
    assert not pb.Request.FromString(request).push_gradients.HasField("plan")


@pytest.mark.parametrize("grads", [
    [torch.ones(2, requires_grad=True)],  # a send point (create_graph): the codec makes it
    [torch.nn.Parameter(torch.ones(2))],
    [torch.ones(2), "not a tensor"],
    [torch.ones(2).to_sparse()],
], ids=["requires-grad", "parameter", "not-a-tensor", "sparse"])
def test_gradients_the_core_does_not_take_are_left_to_the_python_path(grads):
    assert codec().encode_push(1, 2, None, list(range(len(grads))), grads, 0, []) is None


def test_the_same_tensor_twice_is_left_to_the_python_path_as_the_codec_leaves_it():
    g = torch.ones(2)
    assert codec().encode_push(1, 2, None, [5, 6], [g, g], 0, []) is None


def test_a_push_with_more_ids_than_gradients_is_refused():
    with pytest.raises(ValueError, match="one gradient per message id: 2 ids, 1 gradients"):
        codec().encode_push(1, 2, None, [5, 6], [torch.ones(2)], 0, [])


def test_without_the_core_path_no_push_is_written_by_it(monkeypatch):
    take_path(monkeypatch, "0")
    assert tensor_lists.encode_push(1, 2, None, [5], [torch.ones(2)], 0, []) is None


def receive(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes; descriptors that come along (a shared segment's) are closed."""
    data = b""
    while len(data) < size:
        chunk, ancillary, _, _ = sock.recvmsg(size - len(data), socket.CMSG_SPACE(framing.MAX_FDS * 4))
        for _, _, fds in ancillary:
            for fd in array.array("i", fds[: len(fds) - len(fds) % 4]):
                os.close(fd)
        assert chunk, "the peer closed the connection"
        data += chunk
    return data


def read_frame_bytes(sock: socket.socket) -> bytes:
    return receive(sock, framing.LENGTH.unpack(receive(sock, framing.LENGTH.size))[0])


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_a_socket_transport_sends_the_cores_push_as_the_protobuf_one_and_describes_a_resent_one_once(family):
    grads = [torch.randn(3, 4), None, torch.randn(5)]
    args = (9, 4, pb.PassPlan(root=1, active_sends=[1, 2, 3]), [1, 2, 3], grads, 1, [(2, 1)])
    serialized, attachments = codec().encode_push(*args[:2], args[2].SerializeToString(), *args[3:])
    message = protobuf_push(*args)
    a, b = pair(family)
    try:
        transport = SocketTransport(Link("peer", lambda *frame: None, Deadlines()), a, None)
        headers = []
        for request in (Serialized(serialized), message, message):  # the last: sent again, as a retried push is
            transport.send(0, "request", request, attachments)
            headers.append(read_frame_bytes(b))
            for view in attachments:
                receive(b, memoryview(view).nbytes)
        assert headers[0] == headers[1] == headers[2]
        frame = pb.Frame.FromString(headers[0])
        assert list(frame.request.attachments.streamed_sizes) == [48, 20]
        assert frame.request.push_gradients.done[0].rank == 2
    finally:
        a.close(), b.close()


@pytest.mark.skipif(shm.available() is not None, reason="no shared memory here")
def test_a_push_whose_gradient_goes_through_shared_memory_is_described_as_the_protobuf_one():
    """A gradient of 1 MiB or more goes through a shared segment: the description put in front of the
    core's push names it as it names it in front of the protobuf push."""
    grads = [torch.randn(shm.MIN_BYTES // 4 + 1), torch.randn(3)]
    args = (9, 4, None, [1, 2], grads, 0, [])
    serialized, attachments = codec().encode_push(*args)
    pool = shm.SegmentPool()
    a, b = pair("unix")
    try:
        transport = SocketTransport(Link("peer", lambda *frame: None, Deadlines()), a, pool)
        frames = []
        for request in (Serialized(serialized), protobuf_push(*args)):
            transport.send(0, "request", request, attachments)
            frames.append(pb.Frame.FromString(read_frame_bytes(b)))
            receive(b, memoryview(attachments[1]).nbytes)  # the small one streams
        for frame in frames:
            assert list(frame.request.attachments.streamed_sizes) == [memoryview(v).nbytes for v in attachments]
            assert list(frame.request.attachments.shared) == [0]
            assert frame.request.push_gradients == protobuf_push(*args).push_gradients
        assert frames[0].request.attachments.shared[0].descriptor_attached  # the segment's first loan to this peer
    finally:
        transport.close()
        b.close()


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_a_reply_or_request_that_already_says_its_attachments_is_described_once(family, path):
    """A message sent again (a retried push, on a fresh connection) may carry its description from the
    first time: the transport clears it, and the writer (the core's, or Python's) describes each once."""
    attachments = [bytearray(b"x" * 12), bytearray(), bytearray(b"y" * 5)]
    said = pb.Attachments(streamed_sizes=[7, 7, 7, 7], inline=[b"stale"])
    messages = [("response", pb.Response(value=pb.Value(pickle=b"p"), attachments=said)),
                ("request", pb.Request(timeout=2.0, call=pb.Call(context_id=5), attachments=said))]
    a, b = pair(family)
    try:
        transport = SocketTransport(Link("peer", lambda *frame: None, Deadlines()), a, None)
        for kind, message in messages:
            transport.send(3, kind, message, attachments)
            frame = pb.Frame.FromString(read_frame_bytes(b))
            for view in attachments:
                if len(view):
                    receive(b, len(view))
            described = getattr(frame, kind).attachments
            assert list(described.streamed_sizes) == [12, 0, 5] and not described.inline, (kind, described)
        assert frame.request.call.context_id == 5 and frame.request.timeout == 2.0
    finally:
        a.close(), b.close()
