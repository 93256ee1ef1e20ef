"""One frame read off a socket or written to it: by the compiled core, or by framing's Python path.

The compiled reader (native/csrc/frame_reader.cpp) takes a frame's length, header and streamed
attachments in one call without the GIL, reading the header's envelope (the attachments' sizes)
with a protobuf reader of its own; the header is then parsed here as on the Python path, and a frame
whose envelope and parse disagree is refused; a push in the common case comes back as the
ArrivedPush the core read (push_reading.cpp), with no pb.Frame built for it, or, where a push lane is
given, run by the same call (push_lane.cpp) and reported Taken. The compiled writer
(frame_writer.cpp) sends the length, the header and the attachments (and shared segments'
descriptors) without the GIL, as framing.send_all does. ``DISTAUTOGRAD_NATIVE_PATH=0`` keeps the Python path.
"""

from __future__ import annotations

import os
import socket
from typing import Any, List, Optional, Tuple

from google.protobuf.message import DecodeError

from distautograd import errors, native
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import framing, shm
from distautograd.transport.pushes import ArrivedPush, Taken

_receive_buffers = shm.ReceiveBuffers()
KINDS = {0: None, 2: "request", 3: "response", 4: "chunk"}  # Frame's oneof, by field number
NUMBERS = {kind: number for number, kind in KINDS.items() if kind in ("request", "response")}  # what a frame sends

# (the frame, its streamed attachments with None where one is in shared memory -- or None when
# together they were over the limit and are still in the stream -- and their total)
Read = Tuple[pb.Frame, Optional[List[Any]], int]


def allocate(size: int) -> Any:
    """Where an attachment of ``size`` bytes is read into: a warm pooled buffer when it is big."""
    return _receive_buffers.get(size) if size >= shm.MIN_BYTES else bytearray(size)


def reader_for(sock: socket.socket) -> "PythonReader | NativeReader":
    return NativeReader(sock) if native.path_on() else PythonReader(sock)


def write_frame(sock: socket.socket, frame_id: int, kind: str, message, streamed: List[Any], fds: List[int],
                stall: Optional[float], describe: bool = False) -> int:
    """Sends Frame{id, <kind>: message} with ``streamed`` after it, as framing.send_all sends (``fds``
    along with the first bytes; ``stall``: seconds a peer may take no byte); returns the header's size.
    ``message``: a protobuf message, or a request already serialized (bytes). ``describe``: the message
    does not say yet what follows it; it is said here (every attachment streamed, in order)."""
    if native.path_on():
        serialized = message if isinstance(message, bytes) else message.SerializeToString()
        return native.core.write_frame(sock.fileno(), frame_id, NUMBERS[kind], serialized, streamed, fds, stall,
                                       describe)
    if isinstance(message, bytes):
        message = pb.Request.FromString(message)
    if describe:
        message.attachments.streamed_sizes.extend(len(memoryview(a).cast("B")) for a in streamed)
    header = pb.Frame(id=frame_id, **{kind: message}).SerializeToString()
    framing.send_all(sock, [framing.LENGTH.pack(len(header)), header, *streamed], fds, stall)
    return len(header)


class PythonReader(framing.Reader):
    """The reference path: the header parsed, then each attachment read with its own recv."""

    native = False

    def read_frame(self, following_limit: int, lane=None, peer_rank: int = -1) -> Read:
        """The next frame (``lane`` and ``peer_rank``: for the compiled reader only)."""
        frame = self.message(pb.Frame)
        kind = frame.WhichOneof("kind")
        if kind not in ("request", "response"):
            return frame, [], 0
        described = getattr(frame, kind).attachments
        sizes, shared = list(described.streamed_sizes), described.shared
        following = sum(size for index, size in enumerate(sizes) if index not in shared)
        if following > following_limit:
            return frame, None, following
        streamed: List[Any] = []
        for index, size in enumerate(sizes):
            if index in shared:
                streamed.append(None)
                continue
            buffer = allocate(size)
            if size:
                self.into(memoryview(buffer).cast("B"))
            streamed.append(buffer)
        return frame, streamed, following


class NativeReader:
    """The compiled reader, on a descriptor of its own for the caller's socket: the caller shuts the
    socket down to end the reads, and may close it while this thread is elsewhere without this reader
    ever reading a connection that reused the number."""

    native = True

    def __init__(self, sock: socket.socket):
        self._reader = native.core.FrameReader(os.dup(sock.fileno()), sock.family == socket.AF_UNIX)
        self.fds: List[int] = []

    def read_frame(self, following_limit: int, lane=None, peer_rank: int = -1) -> "Read | ArrivedPush | Taken":
        """A frame, or the push it carries when the core read that (a push in the common case), or Taken
        where ``lane`` (a PushLane) ran that push, from the peer of rank ``peer_rank``."""
        core = native.core
        taken = False
        try:
            header, envelope, streamed, following, push = self._reader.read_frame(
                framing.MAX_HEADER_BYTES, following_limit, allocate, shm.MIN_BYTES, lane, peer_rank)  # below: bytearrays
            taken = push is True
        except core.FrameTooLarge as exc:
            raise errors.InvalidArgument(str(exc)) from None
        except core.MalformedFrame as exc:
            raise errors.InvalidArgument(f"undecodable Frame ({exc})") from None
        finally:
            if not taken:  # a push the core ran closed its own descriptors, and reading may be another thread's now
                self.fds.extend(self._reader.take_fds())
        if taken:
            return Taken(framing.LENGTH.size + len(header) + following, len(streamed))
        if push is not None:
            return ArrivedPush(header, streamed, following, push)
        try:
            frame = pb.Frame.FromString(header)
        except DecodeError as exc:
            raise errors.InvalidArgument(f"undecodable Frame ({exc})") from None
        agree(frame, envelope)
        return frame, streamed, following

    def skip(self, size: int) -> None:
        try:
            self._reader.skip(size)
        finally:
            self.fds.extend(self._reader.take_fds())

    close_stray_fds = framing.Reader.close_stray_fds


def agree(frame: pb.Frame, envelope: tuple) -> None:
    """The attachments the stream was read by (the native envelope) are those the header says."""
    kind_number, sizes, shared = envelope
    kind = frame.WhichOneof("kind")
    if kind in ("request", "response"):
        described = getattr(frame, kind).attachments
        if (NUMBERS[kind] == kind_number and described.streamed_sizes == sizes and len(described.shared) == len(shared)
                and all(key in described.shared for key in shared)):
            return  # every frame but a hostile one: checked without building anything
        parsed = (kind, list(described.streamed_sizes), sorted(described.shared))
    else:
        parsed = (kind, [], [])
    if parsed != (KINDS.get(kind_number), sizes, sorted(shared)):
        raise errors.InvalidArgument(f"a frame whose attachments read as {(KINDS.get(kind_number), sizes, shared)} "
                                     f"but parse as {parsed}")
