"""Both frame readers (the compiled one and framing.Reader's Python path) on real socket pairs, Unix
and TCP: what the real writer sent arrives the same through either, and hostile bytes get the same
refusal; the compiled envelope reader agrees with protobuf's own parser on whatever it is given.
The inputs vary per run: the seed is printed, and DISTAUTOGRAD_FUZZ_SEED replays one."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading

import pytest
import torch  # noqa: F401  (the core needs torch's libraries loaded)

from distautograd import errors, native
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import frames, framing
from tests.helpers.socket_pairs import pair
from tests.helpers.paths import take_path

pytestmark = pytest.mark.skipif(native.core is None, reason="the compiled core is not built")
SEED = int(os.environ.get("DISTAUTOGRAD_FUZZ_SEED", random.randrange(1 << 32)))
READERS = {"python": frames.PythonReader, "native": frames.NativeReader}


@pytest.fixture(params=[(r, f) for r in READERS for f in ("unix", "tcp")], ids=lambda p: f"{p[0]}-{p[1]}")
def stream(request):
    """(send bytes and descriptors, the reader on the other end)."""
    kind, family = request.param
    a, b = pair(family)
    sent = []

    def send(data: bytes, fds=()):
        thread = threading.Thread(target=framing.send_all, args=(a, [data], list(fds)))
        thread.start()
        sent.append(thread)

    yield send, READERS[kind](b), a
    for thread in sent:
        thread.join(10)
    a.close()
    b.close()


def frame_bytes(frame: pb.Frame, streamed=()) -> bytes:
    header = frame.SerializeToString()
    return framing.LENGTH.pack(len(header)) + header + b"".join(streamed)


def request(sizes, shared=None, **body) -> pb.Frame:
    attachments = pb.Attachments(streamed_sizes=sizes, shared=shared or {})
    return pb.Frame(id=7, request=pb.Request(attachments=attachments, **body))


def test_frames_and_their_attachments_arrive_whole_in_order(stream):
    send, reader, _ = stream
    rng = random.Random(SEED)
    sent = []
    for i in range(40):
        streamed = [bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 13, 700]))) for _ in range(rng.randrange(4))]
        sent.append((request([len(s) for s in streamed]), streamed))
    big = os.urandom((1 << 20) + 3)  # through the pooled receive buffers, past the read-ahead
    sent.append((pb.Frame(id=9, response=pb.Response(attachments=pb.Attachments(streamed_sizes=[len(big)]))), [big]))
    send(b"".join(frame_bytes(f, s) for f, s in sent))
    for frame, streamed in sent:
        got, buffers, following = reader.read_frame(1 << 30)
        assert got == frame and following == sum(map(len, streamed)), SEED
        assert [bytes(b) for b in buffers] == streamed, SEED


def test_over_the_limit_the_attachments_stay_in_the_stream_to_be_skipped(stream):
    send, reader, _ = stream
    send(frame_bytes(request([300, 500]), [b"a" * 300, b"b" * 500]) + frame_bytes(request([2]), [b"ok"]))
    frame, buffers, following = reader.read_frame(799)
    assert buffers is None and following == 800
    reader.skip(following)
    _, buffers, _ = reader.read_frame(799)
    assert [bytes(b) for b in buffers] == [b"ok"]


def test_a_header_over_the_limit_is_refused_before_it_is_read(stream):
    send, reader, _ = stream
    send(framing.LENGTH.pack(framing.MAX_HEADER_BYTES + 1))
    with pytest.raises(errors.InvalidArgument, match=rf"^a Frame of {framing.MAX_HEADER_BYTES + 1} bytes is over "
                                                     rf"the limit of {framing.MAX_HEADER_BYTES}$"):
        reader.read_frame(1 << 30)


def test_bytes_that_are_not_a_frame_are_refused(stream):
    send, reader, _ = stream
    send(framing.LENGTH.pack(2) + b"\x0a\xff")  # field 1 as length-delimited, its length past the end
    with pytest.raises(errors.InvalidArgument, match="^undecodable Frame"):
        reader.read_frame(1 << 30)


def test_a_connection_closed_mid_frame_is_an_end_of_file(stream):
    _, reader, writer = stream
    framing.send_all(writer, [frame_bytes(request([10]), [b"x" * 10])[:-4]])  # fits the socket's buffer
    writer.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        reader.read_frame(1 << 30)


def test_descriptors_come_with_their_frame_and_shared_attachments_are_not_read_from_the_stream():
    for kind, make in READERS.items():
        a, b = pair("unix")
        try:
            r, w = os.pipe()
            shared = {0: pb.SharedBuffer(segment=1, segment_size=4096, descriptor_attached=True, lease=1)}
            framing.send_all(a, [frame_bytes(request([4096, 3], shared), [b"abc"])], [r])
            framing.send_all(a, [frame_bytes(request([2]), [b"ok"])])
            reader = make(b)
            frame, buffers, following = reader.read_frame(1 << 30)
            assert following == 3 and buffers[0] is None and bytes(buffers[1]) == b"abc", kind
            assert len(reader.fds) == 1 and os.fstat(reader.fds[0]).st_ino == os.fstat(r).st_ino, kind
            reader.close_stray_fds()
            _, buffers, _ = reader.read_frame(1 << 30)
            assert bytes(buffers[0]) == b"ok" and reader.fds == [], kind
            os.close(r), os.close(w)
        finally:
            a.close(), b.close()


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_the_core_makes_small_attachments_itself_and_asks_allocate_for_big_ones(family):
    """Below ``allocate_from`` an attachment is a bytearray the core makes (what frames.allocate makes
    there); from it on, ``allocate`` gives the buffer. Either way it holds the bytes sent."""
    a, b = pair(family)
    asked = []

    def allocate(size):
        asked.append(size)
        return bytearray(size)

    try:
        streamed = [os.urandom(99), os.urandom(100), b"", os.urandom(5), os.urandom(300)]
        framing.send_all(a, [frame_bytes(request([len(x) for x in streamed]), streamed)])
        reader = native.core.FrameReader(os.dup(b.fileno()), family == "unix")
        _, _, buffers, following, _ = reader.read_frame(1 << 20, 1 << 20, allocate, allocate_from=100)
        assert asked == [100, 300] and following == sum(map(len, streamed))
        assert [bytes(x) for x in buffers] == streamed
        assert [type(x) for x in buffers] == [bytearray] * 5
    finally:
        a.close(), b.close()


@pytest.mark.parametrize("family", ["unix", "tcp"])
@pytest.mark.parametrize("kind", list(READERS))
def test_an_attachment_still_on_its_way_is_waited_for_and_others_run_meanwhile(kind, family):
    """The header and part of an attachment arrive, the rest 0.3 s later (from another process): the
    frame is read whole, and the reader lets the GIL go while it waits (a Python thread counts on)."""
    a, b = pair(family)
    counted = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counted.append(1)
            stop.wait(0.01)

    try:
        data = frame_bytes(request([3, 5000, 2]), [b"abc", b"x" * 2500 + b"y" * 2500, b"ok"])
        cut = len(data) - 2600
        framing.send_all(a, [data[:cut]])
        # the rest from another process: a reader that held the GIL while it waited fails here, not hangs
        later = subprocess.Popen([sys.executable, "-c", "import os, sys, time; time.sleep(0.3); "
                                  f"os.write({a.fileno()}, sys.stdin.buffer.read())"],
                                 stdin=subprocess.PIPE, pass_fds=[a.fileno()])
        later.stdin.write(data[cut:])
        later.stdin.close()
        reader = READERS[kind](b)
        counter = threading.Thread(target=count)
        counter.start()
        try:
            frame, buffers, following = reader.read_frame(1 << 30)
        finally:
            stop.set()
            counter.join(10)
            later.wait(10)
        assert [bytes(x) for x in buffers] == [b"abc", b"x" * 2500 + b"y" * 2500, b"ok"] and following == 5005
        assert len(counted) > 5, counted  # ~30 in 0.3 s; none if the read held the GIL while it waited
    finally:
        a.close(), b.close()


# ---------------------------------------------------------------------- the envelope against protobuf


def parsed(data: bytes):
    """What protobuf's own parser makes of ``data``: (kind, sizes, shared keys), or None if it refuses."""
    try:
        frame = pb.Frame.FromString(data)
    except Exception:
        return None
    kind = frame.WhichOneof("kind")
    described = getattr(frame, kind).attachments if kind in ("request", "response") else None
    return (kind, list(described.streamed_sizes) if described else [], sorted(described.shared) if described else [])


def native_envelope(data: bytes):
    kind, sizes, shared = native.core.read_envelope(data)
    return (frames.KINDS[kind], sizes, sorted(shared))


def random_frame(rng: random.Random) -> bytes:
    """A frame protobuf would write, or several spliced as a peer may write them (a field twice
    merges; the oneof set twice keeps the last), with fields the envelope does not read."""
    parts = []
    for _ in range(rng.randrange(1, 4)):
        sizes = [rng.choice([0, 1, 127, 128, 1 << 20, (1 << 64) - 1]) for _ in range(rng.randrange(5))]
        shared = {rng.randrange(6): pb.SharedBuffer(segment=rng.randrange(9), lease=rng.randrange(9))
                  for _ in range(rng.randrange(3))}
        attachments = pb.Attachments(streamed_sizes=sizes, shared=shared, inline=[b"z" * rng.randrange(3)])
        which = rng.choice(["request", "response", "chunk", "id"])
        if which == "request":
            message = pb.Frame(request=pb.Request(timeout=rng.random(), attachments=attachments))
        elif which == "response":
            message = pb.Frame(response=pb.Response(attachments=attachments))
        elif which == "chunk":
            message = pb.Frame(chunk=pb.Chunk())
        else:
            message = pb.Frame(id=rng.randrange(1 << 40))
        parts.append(message.SerializeToString())
    return b"".join(parts)


def mutated(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        choice = rng.randrange(4)
        if choice == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 1 and data:
            del data[rng.randrange(len(data)):]
        elif choice == 2:
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
        elif data:
            at = rng.randrange(len(data))
            data[at:at + 1] = b"\xff" * rng.randrange(1, 12)
    return bytes(data)


def test_the_envelope_is_what_protobuf_parses_for_frames_as_peers_write_them():
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    for _ in range(3000):
        data = random_frame(rng)
        assert native_envelope(data) == parsed(data), (SEED, data)


def test_on_hostile_bytes_the_envelope_agrees_with_protobuf_or_refuses():
    """Mutated frames and noise: where protobuf reads a frame the envelope reads the same, unless it
    refuses what this protocol never sends (a group); where protobuf refuses, the reader refuses
    anyway (the header is parsed after the envelope). Nothing hangs or reads outside the bytes."""
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    refused_alone = 0
    for i in range(20000):
        data = mutated(random_frame(rng), rng) if i % 4 else bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        want = parsed(data)
        try:
            got = native_envelope(data)
        except native.core.MalformedFrame as exc:
            if want is not None:
                assert "groups" in str(exc) or "ten bytes" in str(exc), (SEED, data, exc, want)
                refused_alone += 1
            continue
        if want is not None:
            assert got == want, (SEED, data)
    print(f"{refused_alone} inputs protobuf read that the envelope refused (groups)")


def test_the_runtime_reads_frames_natively_unless_told_not_to(monkeypatch):
    a, b = pair("unix")
    try:
        assert type(frames.reader_for(b)) is frames.NativeReader
        take_path(monkeypatch, "0")
        assert type(frames.reader_for(b)) is frames.PythonReader
    finally:
        a.close(), b.close()


def test_a_socket_closed_under_the_compiled_reader_never_has_it_read_another_connection():
    """The reader reads its own duplicate of the descriptor: after the socket is shut down and closed,
    and a new connection takes the number, it sees the end of its own connection, not the new one's."""
    a, b = pair("unix")
    reader = frames.NativeReader(b)
    number = b.fileno()
    b.shutdown(socket.SHUT_RDWR)
    b.close()
    c, d = pair("unix")
    try:
        assert number in (c.fileno(), d.fileno())
        framing.send_all(c, [frame_bytes(request([2]), [b"ok"])])
        framing.send_all(d, [frame_bytes(request([2]), [b"ok"])])
        with pytest.raises(EOFError):
            reader.read_frame(1 << 30)
        assert [bytes(x) for x in frames.PythonReader(d).read_frame(1 << 30)[1]] == [b"ok"]
        assert [bytes(x) for x in frames.PythonReader(c).read_frame(1 << 30)[1]] == [b"ok"]
    finally:
        for s in (a, c, d):
            s.close()


def test_a_frame_whose_envelope_and_parse_disagree_is_refused():
    frame = request([3, 4], {1: pb.SharedBuffer(segment=1)})
    frames.agree(frame, (2, [3, 4], [1]))  # as the envelope reader reads it
    for envelope in [(3, [3, 4], [1]), (2, [3], [1]), (2, [3, 4], [])]:
        with pytest.raises(errors.InvalidArgument, match=r"^a frame whose attachments read as .* but parse as "
                                                         r"\('request', \[3, 4\], \[1\]\)$"):
            frames.agree(frame, envelope)
