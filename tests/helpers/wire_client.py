"""A bare gRPC client for tests that talk to a worker the way an outsider (or an attacker) would."""

from __future__ import annotations

from typing import Optional

import grpc

from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.encoding import pickling


def call_frame(func, *args) -> pb.Frame:
    value = pb.Value(pickle=pickling.dumps((func, args, {})))
    return pb.Frame(id=1, request=pb.Request(call=pb.Call(function=value)))


def unary(address: str, payload: bytes, token: Optional[str] = None, timeout: float = 10, credentials=None) -> bytes:
    """Sends raw bytes to Worker.Call and returns the raw reply (grpc.RpcError on a bad status)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.ssl_target_name_override", "localhost")]
    channel = grpc.secure_channel(address, credentials, options) if credentials else grpc.insecure_channel(address, options)
    with channel:
        method = channel.unary_unary("/distautograd.v1.Worker/Call")
        return method(payload, metadata=metadata, timeout=timeout)


def call(address: str, func, *args, token: Optional[str] = None, credentials=None) -> pb.Response:
    reply = unary(address, call_frame(func, *args).SerializeToString(), token=token, credentials=credentials)
    return pb.Frame.FromString(reply).response
