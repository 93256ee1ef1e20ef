"""A bare gRPC client for tests that talk to a worker the way an outsider (or an attacker) would."""

from __future__ import annotations

from typing import Optional

import grpc

from distautograd.encoding import pickling
from distautograd.protocol.v1 import messages_pb2 as pb


def call_frame(func, *args) -> pb.Frame:
    value = pb.Value(pickle=pickling.dumps((func, args, {})))
    return pb.Frame(id=1, request=pb.Request(call=pb.Call(function=value)))


def channel(address: str, credentials=None) -> grpc.Channel:
    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.ssl_target_name_override", "localhost")]
    return grpc.secure_channel(address, credentials, options) if credentials else grpc.insecure_channel(address, options)


def metadata(token: Optional[str]) -> tuple:
    return (("authorization", f"Bearer {token}"),) if token else ()


def unary(address: str, payload: bytes, token: Optional[str] = None, timeout: float = 10, credentials=None,
          metadata_extra: tuple = ()) -> bytes:
    """Sends raw bytes to Worker.Call and returns the raw reply (grpc.RpcError on a bad status);
    ``metadata_extra``: more metadata (the name and rank a member's calls carry)."""
    with channel(address, credentials) as chan:
        method = chan.unary_unary("/distautograd.v1.Worker/Call")
        return method(payload, metadata=metadata(token) + tuple(metadata_extra), timeout=timeout)


def call(address: str, func, *args, token: Optional[str] = None, credentials=None) -> pb.Response:
    reply = unary(address, call_frame(func, *args).SerializeToString(), token=token, credentials=credentials)
    return pb.Frame.FromString(reply).response


class Peer:
    """A worker as a token-holding peer reaches it: what a connected caller may still get wrong."""

    def __init__(self, address: str, token: str):
        self.address = address
        self.token = token

    def unary(self, payload: bytes, timeout: float = 10) -> bytes:
        return unary(self.address, payload, self.token, timeout)

    def call(self, func, *args) -> pb.Response:
        return call(self.address, func, *args, token=self.token)
