"""Malformed and oversized input gets INVALID_ARGUMENT / RESOURCE_EXHAUSTED, and the process keeps serving."""

import grpc
import pytest

from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.encoding import pickling
from tests.helpers import remote, wire_client


@pytest.fixture
def peer(cluster):
    """worker1, reached by a caller that holds the world's token: authentication is not what is tested."""
    return wire_client.Peer(cluster.worker("worker1").address, cluster.client_token())


def still_serving(peer):
    response = peer.call(remote.add, 2, 3)
    assert not response.HasField("error"), response.error.message


def test_undecodable_frame_is_invalid_argument(peer):
    with pytest.raises(grpc.RpcError) as err:
        peer.unary(b"\xff\xff\xff not a protobuf")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    still_serving(peer)


def test_undecodable_frame_on_a_stream_ends_that_stream_only(peer):
    with wire_client.channel(peer.address) as channel:
        stream = channel.stream_stream("/distautograd.v1.Worker/Connect")
        with pytest.raises(grpc.RpcError) as err:
            list(stream(iter([b"\x0a\xff\xff garbage"]), metadata=wire_client.metadata(peer.token), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    still_serving(peer)


def test_a_request_without_a_body_is_invalid_argument(peer):
    frame = pb.Frame(id=1, request=pb.Request())
    reply = pb.Frame.FromString(peer.unary(frame.SerializeToString())).response
    assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "empty" in reply.error.message
    still_serving(peer)


def test_a_response_sent_as_a_call_is_invalid_argument(peer):
    with pytest.raises(grpc.RpcError) as err:
        peer.unary(pb.Frame(id=1, response=pb.Response()).SerializeToString())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    still_serving(peer)


def test_garbage_pickle_is_invalid_argument(peer):
    frame = pb.Frame(id=1, request=pb.Request(call=pb.Call(function=pb.Value(pickle=b"\x80\x05garbage"))))
    reply = pb.Frame.FromString(peer.unary(frame.SerializeToString())).response
    assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "malformed pickle" in reply.error.message
    still_serving(peer)


def test_a_tensor_larger_than_its_bytes_is_invalid_argument(peer):
    """A declared shape of 2**40 floats with 4 bytes behind it is refused, not allocated."""
    placeholder = object()
    pickle = pickling.dumps((remote.echo, (placeholder,), {}), lambda o: 0 if o is placeholder else None)
    value = pb.Value(pickle=pickle, tensors=[pb.TensorMeta(dtype="float32", shape=[1 << 40], attachment=0)])
    request = pb.Request(call=pb.Call(function=value), attachments=pb.Attachments(inline=[b"abcd"]))
    reply = pb.Frame.FromString(peer.unary(pb.Frame(id=1, request=request).SerializeToString())).response
    assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "needs 4398046511104 bytes but 4 arrived" in reply.error.message
    still_serving(peer)


def test_a_message_over_the_limit_is_resource_exhausted(peer):
    frame = wire_client.call_frame(remote.echo, b"x" * (80 << 20))
    with pytest.raises(grpc.RpcError) as err:
        peer.unary(frame.SerializeToString(), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(peer)
