"""A raw peer on a worker's Unix socket, for tests that send what no well-behaved sender would."""

from __future__ import annotations

import array
import os
import socket
import struct

from distautograd.encoding import pickling
from distautograd.protocol.v1 import messages_pb2 as pb

_LENGTH = struct.Struct("<I")


class RawSocketPeer:
    def __init__(self, unix_path: str, name: str = "raw-peer"):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(unix_path)
        self._send(pb.Hello(name=name, rank=60000).SerializeToString())
        length = _LENGTH.unpack(self._exactly(4))[0]
        welcome = pb.Welcome.FromString(self._exactly(length))
        assert not welcome.error, welcome.error

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("closed")
            data += chunk
        return data

    def _send(self, data: bytes, fds=()) -> None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([_LENGTH.pack(len(data)), data], ancillary)

    def send_frame(self, frame: pb.Frame, payload: bytes = b"", fds=()) -> None:
        data = frame.SerializeToString()
        self.sock.sendmsg([_LENGTH.pack(len(data)), data, payload],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else [])

    def receive_frame(self) -> pb.Frame:
        length = _LENGTH.unpack(self._exactly(4))[0]
        return pb.Frame.FromString(self._exactly(length))

    def close(self) -> None:
        self.sock.close()


def call_with_shared_tensor(func, nbytes: int, segment_size: int) -> pb.Frame:
    """A call whose one float32 argument is said to lie in a shared segment sent along with it."""
    placeholder = object()
    value = pb.Value(pickle=pickling.dumps((func, (placeholder,), {}), lambda o: 0 if o is placeholder else None),
                     tensors=[pb.TensorMeta(dtype="float32", shape=[nbytes // 4], attachment=0)])
    attachments = pb.Attachments(streamed_sizes=[nbytes], shared={0: pb.SharedBuffer(
        segment=7, segment_size=segment_size, descriptor_attached=True, lease=1)})
    return pb.Frame(id=1, request=pb.Request(call=pb.Call(function=value), attachments=attachments))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
