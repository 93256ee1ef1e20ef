"""Both frame writers (the compiled one and framing.send_all's Python path) on real socket pairs, Unix
and TCP: the same bytes arrive from either, with the same descriptors; frames bigger than the socket's
buffer, more buffers than one sendmsg takes and more descriptors than one message carries go whole;
a peer that reads nothing fails the send after the stall time, a closed one at once, and Ctrl-C
stops a send that waits."""

from __future__ import annotations

import array
import os
import signal
import socket
import threading
import time

import pytest
import torch  # noqa: F401  (the core needs torch's libraries loaded)

from distautograd import native
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import frames, framing
from tests.helpers.socket_pairs import pair
from tests.helpers.paths import take_path
from tests.helpers.protobuf_bytes import field

pytestmark = pytest.mark.skipif(native.core is None, reason="the compiled core is not built")
PATHS = ["native", "python"]  # every test taking ``path`` runs on each (tests/unit/conftest.py)


def drain(sock: socket.socket, into: bytearray, fds: list) -> threading.Thread:
    """Reads everything until the peer shuts down, descriptors too (Unix)."""
    def run():
        while True:
            if sock.family == socket.AF_UNIX:
                data, ancillary, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(framing.MAX_FDS * 4))
                for _, _, cdata in ancillary:
                    fds.extend(array.array("i", cdata[: len(cdata) - len(cdata) % 4]))
            else:
                data = sock.recv(1 << 20)
            if not data:
                return
            into.extend(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def sent(family: str, frame_id: int, kind: str, message, attachments, fds=(), stall=None, describe=False):
    """What the other end read: (bytes, how many descriptors came, the header's size)."""
    a, b = pair(family)
    got, came = bytearray(), []
    reader = drain(b, got, came)
    try:
        size = frames.write_frame(a, frame_id, kind, message, list(attachments), list(fds), stall, describe)
        a.shutdown(socket.SHUT_WR)
        reader.join(30)
    finally:
        a.close(), b.close()
        for fd in came:
            os.close(fd)
    return bytes(got), len(came), size


def request(n: int) -> pb.Request:
    message = pb.Request(timeout=2.5, push_gradients=pb.PushGradients(context_id=1 << 40, pass_id=n, message_ids=[7, 9]))
    message.attachments.streamed_sizes.extend([3, 0, 5])
    return message


@pytest.mark.parametrize("family", ["unix", "tcp"])
@pytest.mark.parametrize("frame_id, kind", [(0, "request"), (12345678901, "request"), (3, "response")])
def test_both_writers_send_the_same_bytes(family, frame_id, kind, monkeypatch):
    message = request(1) if kind == "request" else pb.Response(empty=pb.Empty())
    attachments = [memoryview(b"abc"), memoryview(b""), memoryview(bytearray(b"defgh"))]
    out = {}
    for path in PATHS:
        with monkeypatch.context() as patch:
            if path == "python":
                take_path(patch, "0")
            out[path] = sent(family, frame_id, kind, message, attachments)
    assert out["native"] == out["python"]
    data, _, size = out["native"]
    (length,) = framing.LENGTH.unpack(data[:4])
    assert length == size and pb.Frame.FromString(data[4:4 + length]) == pb.Frame(id=frame_id, **{kind: message})
    assert data[4 + length:] == b"abcdefgh"


@pytest.mark.parametrize("sizes", [[], [0], [3, 0, 5], [127, 128, 300, 0, 16384], [1] * 200])
def test_a_request_described_by_the_writer_parses_as_the_request_with_its_attachments(sizes, path):
    """``describe``: the writer says what follows a serialized request (every attachment, in order, zero
    sizes too); protobuf parses the header to that request with those sizes, and the attachments follow.
    The core writes the bytes the socket transport made in Python before (Request{attachments}
    serialized, then the body), but for no attachments at all, where it writes no empty description."""
    body = request(4)
    body.ClearField("attachments")
    attachments = [memoryview(os.urandom(size)) for size in sizes]
    data, _, size = sent("unix", 0, "request", body.SerializeToString(), attachments, describe=True)
    got = pb.Frame.FromString(data[4:4 + size]).request
    assert list(got.attachments.streamed_sizes) == sizes and not got.attachments.shared
    assert got.push_gradients == body.push_gradients and got.timeout == body.timeout
    assert data[4 + size:] == b"".join(bytes(a) for a in attachments)
    if path == "native" and sizes:
        described = pb.Request()
        described.attachments.streamed_sizes.extend(sizes)
        inner = described.SerializeToString() + body.SerializeToString()
        assert data[4:4 + size] == field(2, inner)  # Frame's request: those bytes as they are


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_big_frames_and_many_buffers_go_whole(family, path):
    big = os.urandom(24 << 20)  # over the socket's buffer: the writer waits for the reader, many times
    many = [memoryview(bytes([i % 251])) for i in range(framing.IOV_MAX * 2 + 5)]  # over one sendmsg's buffers
    data, _, size = sent(family, 1, "request", request(2), [memoryview(big), *many])
    assert data[4 + size:] == big + bytes(i % 251 for i in range(len(many)))


def test_descriptors_ride_along_in_groups(path):
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(framing.MAX_FDS + 6)]  # two groups
    try:
        data, came, size = sent("unix", 1, "request", request(3), [memoryview(b"x" * 10)], fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert came == len(fds) and data[4 + size:] == b"x" * 10


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_a_peer_that_reads_nothing_fails_the_send_after_the_stall_time(family, path):
    a, b = pair(family)
    try:
        started = time.monotonic()
        with pytest.raises(OSError) as raised:
            frames.write_frame(a, 1, "request", request(4), [memoryview(bytes(64 << 20))], [], 0.5)
        assert raised.value.errno == 110 and "took no byte for 0.5 s" in str(raised.value)
        assert 0.4 < time.monotonic() - started < 10
    finally:
        a.close(), b.close()


def test_a_closed_peer_fails_the_send(path):
    a, b = pair("unix")
    b.close()
    try:
        with pytest.raises(OSError) as raised:
            frames.write_frame(a, 1, "request", request(5), [memoryview(b"x")], [], None)
        assert raised.value.errno in (32, 104)  # EPIPE, ECONNRESET: and no SIGPIPE
    finally:
        a.close()


def test_ctrl_c_stops_a_send_that_waits(path):
    """A send the peer does not read waits (no stall time); SIGINT raises KeyboardInterrupt in it, as it
    would in socket.sendmsg."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # CI may start us with SIGINT ignored
    a, b = pair("unix")
    timer = threading.Timer(0.5, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            frames.write_frame(a, 1, "request", request(6), [memoryview(bytes(64 << 20))], [], None)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
        a.close(), b.close()
