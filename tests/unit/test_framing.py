"""Frames on a socket pair: every byte and descriptor sent arrives once, in order, whatever the kernel takes per call."""

import errno
import os
import socket
import threading
import time

import pytest

from distautograd import errors
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import framing
from tests.helpers import socket_pairs


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def received(sock, size, into=None):
    """Reads ``size`` bytes on a thread (the sender may block until they are read)."""
    out = {}

    def read():
        reader = framing.Reader(sock)
        out["bytes"] = bytes(reader.exactly(size))
        out["fds"] = reader.fds

    thread = threading.Thread(target=read)
    thread.start()
    return thread, out


def patterned(count):
    """Buffers of many sizes (zero too), each byte saying where it belongs."""
    buffers = [bytes((i + j) % 251 for j in range(i % 37)) for i in range(count)]
    return buffers, b"".join(buffers)


@pytest.mark.parametrize("count", [1, framing.IOV_MAX - 1, framing.IOV_MAX, framing.IOV_MAX + 1, 3 * framing.IOV_MAX])
def test_any_number_of_buffers_arrives_in_order(pair, count):
    """More buffers than one sendmsg takes (IOV_MAX) are sent in several calls, not refused (EMSGSIZE)."""
    buffers, want = patterned(count)
    thread, out = received(pair[1], len(want))
    framing.send_all(pair[0], list(buffers))
    thread.join(10)
    assert out["bytes"] == want


def test_a_buffer_the_kernel_takes_in_pieces_arrives_whole(pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # each sendmsg takes a few KiB at most
    big = os.urandom(3 << 20)
    buffers = [b"head", memoryview(big), b"", b"tail" * 1000]
    want = b"".join(bytes(x) for x in buffers)
    thread, out = received(b, len(want))
    framing.send_all(a, buffers)
    thread.join(20)
    assert out["bytes"] == want


def test_descriptors_ride_along_in_groups_the_receiver_can_take(pair):
    """150 descriptors: three groups of at most MAX_FDS, each on a byte of its own, all collected."""
    read_ends = []
    fds = []
    for _ in range(150):
        r, w = os.pipe()
        read_ends.append(r)
        fds.append(w)
    buffers, want = patterned(50)
    thread, out = received(pair[1], len(want))
    framing.send_all(pair[0], list(buffers), fds)
    thread.join(10)
    try:
        assert out["bytes"] == want
        assert len(out["fds"]) == 150
        for fd, r in zip(out["fds"], read_ends):  # the received descriptor is the same pipe, in order
            os.write(fd, b"x")
            assert os.read(r, 1) == b"x"
    finally:
        for fd in read_ends + fds + out.get("fds", []):
            os.close(fd)


def test_a_peer_that_takes_nothing_for_the_stall_limit_fails_the_send_with_etimedout(pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    started = time.monotonic()
    with pytest.raises(OSError) as raised:
        framing.send_all(a, [b"x" * (1 << 20)], stall=0.3)  # b reads nothing
    took = time.monotonic() - started
    assert raised.value.errno == errno.ETIMEDOUT and "took no byte for 0.3 s" in str(raised.value)
    assert 0.3 <= took < 2.5, took


def test_a_slow_peer_that_keeps_taking_bytes_is_not_a_stall(pair):
    """The limit is on a wait with no progress, not on the whole send: a reader that takes a little
    every 0.2 s gets 256 KiB and 150 descriptors through a 1 s limit that the whole send outlasts."""
    a, b = pair
    for end in (a, b):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    read_ends, fds = zip(*(os.pipe() for _ in range(150)))
    want = os.urandom(256 << 10)
    out = {"bytes": bytearray(), "fds": []}

    def read_slowly():
        reader = framing.Reader(b)
        while len(out["bytes"]) < len(want):
            time.sleep(0.2)
            out["bytes"] += reader.exactly(min(32 << 10, len(want) - len(out["bytes"])))
        out["fds"] = reader.fds

    thread = threading.Thread(target=read_slowly)
    thread.start()
    started = time.monotonic()
    try:
        framing.send_all(a, [want[:100], memoryview(want)[100:]], list(fds), stall=1.0)
        thread.join(20)
        assert time.monotonic() - started > 1.0  # it did outlast the limit
        assert bytes(out["bytes"]) == want and len(out["fds"]) == 150
        os.write(out["fds"][-1], b"y")
        assert os.read(read_ends[-1], 1) == b"y"
    finally:
        for fd in list(read_ends) + list(fds) + out["fds"]:
            os.close(fd)


def test_a_message_over_its_limit_is_refused_before_its_bytes_are_read(pair):
    a, b = pair
    a.sendall(framing.LENGTH.pack(1 << 30))
    with pytest.raises(errors.InvalidArgument, match="of 1073741824 bytes is over the limit of 4096"):
        framing.Reader(b).message(pb.Hello, limit=4096)


def test_a_message_at_its_limit_is_read_and_an_undecodable_one_is_invalid(pair):
    a, b = pair
    hello = pb.Hello(name="x" * 40)
    data = hello.SerializeToString()
    framing.write_message(a, hello)
    assert framing.Reader(b).message(pb.Hello, limit=len(data)) == hello
    a.sendall(framing.LENGTH.pack(3) + b"\xff\xff\xff")
    with pytest.raises(errors.InvalidArgument, match="undecodable Hello"):
        framing.Reader(b).message(pb.Hello)


def test_the_end_of_the_stream_midway_is_an_eof_and_a_deadline_is_kept(pair):
    a, b = pair
    a.sendall(b"abc")
    reader = framing.Reader(b, deadline=time.monotonic() + 0.3)
    start = time.monotonic()
    with pytest.raises((TimeoutError, socket.timeout)):
        reader.exactly(10)
    assert 0.25 <= time.monotonic() - start < 2
    a.close()
    with pytest.raises(EOFError):
        framing.Reader(b).exactly(10)


def test_skip_reads_past_exactly_what_it_is_told(pair):
    a, b = pair
    sender = threading.Thread(target=a.sendall, args=(b"x" * ((1 << 20) + 5) + b"after",))
    sender.start()
    reader = framing.Reader(b)
    reader.skip((1 << 20) + 5)
    assert reader.exactly(5) == b"after"
    sender.join(10)


def test_descriptors_without_bytes_to_ride_on_are_refused(pair):
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="1 descriptors had no bytes to ride on"):
            framing.send_all(pair[0], [b"", b""], [w])
    finally:
        os.close(r)
        os.close(w)


def test_a_tcp_connection_that_goes_silent_fails_within_the_silence_limit():
    """Keepalive probes when idle and TCP_USER_TIMEOUT for unacknowledged data: about 3 s, not 15 minutes."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    try:
        framing.tune(client, 3.0)
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        idle, interval, count = (client.getsockopt(socket.IPPROTO_TCP, option)
                                 for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT))
        assert idle + interval * count <= 3
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 3000
        plain = socket.create_connection(listener.getsockname())
        framing.tune(plain)  # no limit asked: the kernel's defaults stay
        assert plain.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        plain.close()
    finally:
        client.close()
        listener.close()


def test_the_writev_limit_is_the_kernels_and_at_least_sixteen(monkeypatch):
    assert framing._iov_max() == os.sysconf("SC_IOV_MAX") == 1024  # Linux's UIO_MAXIOV
    monkeypatch.setattr(os, "sysconf", lambda name: 8 if name == "SC_IOV_MAX" else 0)
    assert framing._iov_max() == 16

    def unknown(name):
        raise ValueError(f"unrecognized configuration name {name}")
    monkeypatch.setattr(os, "sysconf", unknown)
    assert framing._iov_max() == 1024


def test_descriptors_a_message_left_unclaimed_are_closed():
    a, b = socket.socketpair()
    with a, b:
        reader = framing.Reader(b)
        first, second = os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_RDONLY)
        os.close(second)  # one already closed: the rest are still closed
        reader.fds = [second, first]
        reader.close_stray_fds()
        assert reader.fds == []
        with pytest.raises(OSError):
            os.fstat(first)


@pytest.fixture
def tcp_pair():
    a, b = socket_pairs.tcp_pair()
    yield a, b
    a.close()
    b.close()


def test_over_tcp_a_buffer_sent_in_pieces_arrives_whole_then_eof_and_the_deadline_say_so(tcp_pair):
    a, b = tcp_pair
    want = os.urandom(1 << 20)

    def dribble():
        for i in range(0, len(want), 100_000):
            a.sendall(want[i:i + 100_000])
            time.sleep(0.005)

    sender = threading.Thread(target=dribble)
    sender.start()
    assert framing.Reader(b).exactly(len(want)) == want
    sender.join(10)
    a.sendall(b"abc")
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="^(the peer took too long|timed out)$"):
        framing.Reader(b, deadline=time.monotonic() + 0.3).exactly(10)
    assert 0.25 <= time.monotonic() - start < 2
    with pytest.raises(TimeoutError, match="^the peer took too long$"):  # a deadline already past
        framing.Reader(b, deadline=time.monotonic() - 1).exactly(1)
    a.close()
    with pytest.raises(EOFError, match="^the peer closed the connection$"):
        framing.Reader(b).exactly(10)


def test_keepalive_probes_add_up_to_the_silence_limit():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    try:
        framing.tune(client, 9.0)
        idle, interval, count = (client.getsockopt(socket.IPPROTO_TCP, option)
                                 for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT))
        assert (idle, interval, count) == (3, 3, 2)  # silent 3 s, then two probes 3 s apart: 9 s
    finally:
        client.close()
        listener.close()
