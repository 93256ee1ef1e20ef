"""Frames on a byte stream: a length, a protobuf header, then raw attachments; and the exact reads that take them.

Sending gathers every buffer of a frame into as few ``sendmsg`` calls as it can, passing file
descriptors (shared memory) along with the first bytes; reading fills the very buffers tensors
are made from, collecting any descriptors that came along, within an optional deadline.
"""

from __future__ import annotations

import array
import errno
import math
import os
import select
import socket
import struct
import time
from typing import Any, List, Optional, Sequence

from google.protobuf.message import DecodeError

from distautograd import errors

LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 16 << 20  # a frame's protobuf part; tensors travel beside it
BUFFER_BYTES = 4 << 20
MAX_FDS = 64


def tune(sock: socket.socket, silence: Optional[float] = None) -> None:
    """No Nagle delay, large buffers; with ``silence`` (seconds), a TCP connection whose peer stops
    answering fails within about that long (keepalive probes when idle, TCP_USER_TIMEOUT for data
    not acknowledged) instead of the kernel's 15 minutes: reads and writes then raise ETIMEDOUT."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if silence and hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: elsewhere the kernel's defaults stay
            probe = max(1, int(silence / 3))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, probe)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, probe)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(silence * 1000))
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
        except OSError:
            pass


def _iov_max() -> int:
    try:
        return max(16, os.sysconf("SC_IOV_MAX"))
    except (AttributeError, ValueError, OSError):
        return 1024


IOV_MAX = _iov_max()  # buffers one sendmsg may take (Linux: 1024; more fail with EMSGSIZE)


def send_all(sock: socket.socket, buffers: List[Any], fds: Sequence[int] = (), stall: Optional[float] = None) -> None:
    """Sends every byte of ``buffers`` (byte-sized views), and ``fds`` along with the first of them, at
    most MAX_FDS descriptors to a message (the receiver's buffer for them holds no more): each group
    but the last rides on one byte of its own. At most IOV_MAX buffers go to one sendmsg. With
    ``stall`` (seconds), a peer that takes no byte for that long fails the send with ETIMEDOUT (it
    reads nothing: stopped, or cut off); the frame is then half sent and the connection must end."""
    groups = [list(fds[i:i + MAX_FDS]) for i in range(0, len(fds), MAX_FDS)]
    flags = 0 if stall is None else socket.MSG_DONTWAIT
    first = 0  # buffers before this one are sent
    while first < len(buffers):
        if groups and not len(buffers[first]):
            first += 1  # descriptors ride on a byte: an empty buffer would drop them
            continue
        try:
            if groups:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", groups[0]))]
                sent = sock.sendmsg([memoryview(buffers[first])[:1]], ancillary, flags)
                groups.pop(0)
            else:
                sent = sock.sendmsg(buffers[first:first + IOV_MAX], [], flags)
        except BlockingIOError:
            _wait_writable(sock, stall)
            continue
        while first < len(buffers) and sent >= len(buffers[first]):
            sent -= len(buffers[first])
            first += 1
        if sent:
            buffers[first] = memoryview(buffers[first])[sent:]
    if groups:
        raise ValueError(f"{sum(map(len, groups))} descriptors had no bytes to ride on")


def _wait_writable(sock: socket.socket, stall: float) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    if not poller.poll(math.ceil(stall * 1000)):
        raise OSError(errno.ETIMEDOUT, f"the peer took no byte for {stall:g} s")


class Reader:
    """Exact reads from a socket, collecting descriptors passed along the way; with a ``deadline``
    (time.monotonic), every read together must be over by then."""

    def __init__(self, sock: socket.socket, deadline: Optional[float] = None):
        self.sock = sock
        self.fds: List[int] = []
        self._unix = sock.family == socket.AF_UNIX
        self._deadline = deadline

    def into(self, view: memoryview) -> None:
        got, size = 0, len(view)
        while got < size:
            if self._deadline is not None:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the peer took too long")
                self.sock.settimeout(remaining)
            # MSG_WAITALL: woken once when the whole of it is there, not once per chunk the sender's
            # kernel queues (each wake-up costs more than the copy, and takes the GIL from the sender)
            if self._unix:
                n, ancillary, _, _ = self.sock.recvmsg_into([view[got:]], socket.CMSG_SPACE(MAX_FDS * 4),
                                                            socket.MSG_WAITALL)
                for level, kind, data in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds = array.array("i")
                        fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                        self.fds.extend(fds)
            else:
                n = self.sock.recv_into(view[got:], size - got, socket.MSG_WAITALL)
            if not n:
                raise EOFError("the peer closed the connection")
            got += n

    def close_stray_fds(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def exactly(self, size: int) -> bytearray:
        buffer = bytearray(size)
        if size:
            self.into(memoryview(buffer))
        return buffer

    def skip(self, size: int) -> None:
        scratch = memoryview(bytearray(min(size, 1 << 20)))
        while size:
            step = min(size, len(scratch))
            self.into(scratch[:step])
            size -= step

    def message(self, cls, limit: int = MAX_HEADER_BYTES):
        (length,) = LENGTH.unpack(self.exactly(LENGTH.size))
        if length > limit:
            raise errors.InvalidArgument(f"a {cls.__name__} of {length} bytes is over the limit of {limit}")
        try:
            return cls.FromString(bytes(self.exactly(length)))
        except DecodeError as exc:
            raise errors.InvalidArgument(f"undecodable {cls.__name__} ({exc})") from None


def write_message(sock: socket.socket, message) -> None:
    data = message.SerializeToString()
    send_all(sock, [LENGTH.pack(len(data)), data])
