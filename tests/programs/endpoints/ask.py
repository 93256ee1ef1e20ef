"""Asks a coordinator for its endpoints, with and without the token; prints what each got as JSON."""

import json
import sys

import grpc

from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.protocol.v1.messages_pb2_grpc import CoordinatorStub


def ask(address, token):
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as chan:
        try:
            reply = CoordinatorStub(chan).GetEndpoints(pb.Empty(), metadata=metadata, timeout=10)
            return {"ok": True, "unix_path": reply.unix_path}
        except grpc.RpcError as exc:
            return {"ok": False, "code": exc.code().name, "details": exc.details()}


if __name__ == "__main__":
    address, token = sys.argv[1], sys.argv[2]
    print(json.dumps({"without": ask(address, ""), "wrong": ask(address, "not-the-token"),
                      "with": ask(address, token)}))
