"""What a peer can make a process hold: bounded before authentication, bounded by bytes that arrived after it,
and never so much that the health check stops answering. Each attack runs against a real worker."""

import socket
import struct
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distautograd import rpc
from distautograd.protocol.v1 import messages_pb2 as pb
from tests.helpers import remote, wire_client

pytestmark = pytest.mark.usefixtures("trainer")
MIB = 1 << 20


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as chan:
        reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def worker1_entry():
    from distautograd.runtime.current import get as current_agent

    return current_agent().world.entry(rpc.get_worker_info("worker1").id)


def tcp(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=5)


def test_a_huge_hello_is_refused_without_reading_it(cluster):
    pid = cluster.worker("worker1").process.pid
    before = rss(pid)
    sock = tcp(worker1_entry().socket_address)
    sock.sendall(struct.pack("<I", 16 * MIB))  # "a Hello of 16 MiB follows"
    sock.settimeout(5)
    assert sock.recv(1) == b""  # closed at once
    sock.close()
    assert rss(pid) - before < 8 * MIB


def test_a_handshake_dripping_one_byte_at_a_time_is_cut_off(cluster):
    sock = tcp(worker1_entry().socket_address)
    sock.sendall(struct.pack("<I", 1000))  # a Hello of a size it may have; then one byte a second
    start = time.monotonic()
    sock.settimeout(1)
    closed = False
    while time.monotonic() - start < 20 and not closed:
        try:
            sock.send(b"\x00")
            closed = sock.recv(1) == b""
        except socket.timeout:
            continue
        except OSError:
            closed = True
    sock.close()
    assert closed and 8 < time.monotonic() - start < 15  # the whole handshake has 10 s, however slow


def test_silent_connections_cannot_pile_up_threads_or_memory(cluster):
    pid = cluster.worker("worker1").process.pid
    threads_before, rss_before = threads(pid), rss(pid)
    silent = [tcp(worker1_entry().socket_address) for _ in range(200)]
    try:
        time.sleep(1)
        assert threads(pid) - threads_before <= 40  # handshakes are capped; the rest are closed at once
        assert rss(pid) - rss_before < 64 * MIB
        assert serving(cluster.worker("worker1").address)
        assert rpc.rpc_sync("worker1", remote.add, args=(1, 1)) == 2
    finally:
        for sock in silent:
            sock.close()


def test_compressed_calls_are_refused_before_they_are_inflated(cluster):
    pid = cluster.worker("worker1").process.pid
    before = rss(pid)
    frame = wire_client.call_frame(remote.echo, b"\0" * (60 * MIB)).SerializeToString()
    options = [("grpc.max_send_message_length", 100 * MIB)]
    with grpc.insecure_channel(cluster.worker("worker1").address, compression=grpc.Compression.Gzip,
                               options=options) as chan:
        with pytest.raises(grpc.RpcError) as err:
            chan.unary_unary("/distautograd.v1.Worker/Call")(frame, metadata=wire_client.metadata(cluster.client_token()),
                                                              timeout=30)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert rss(pid) - before < 32 * MIB


def open_stream(cluster, frames):
    chan = wire_client.channel(cluster.worker("worker1").address)
    call = chan.stream_stream("/distautograd.v1.Worker/Connect")(
        (f.SerializeToString() if isinstance(f, pb.Frame) else f for f in frames), metadata=wire_client.metadata(cluster.client_token()) + (("x-distautograd-rank", "60000"),))
    return chan, call


def declaring(size: int) -> pb.Frame:
    call = wire_client.call_frame(remote.echo, 1).request.call
    return pb.Frame(id=5, request=pb.Request(call=call, attachments=pb.Attachments(streamed_sizes=[size])))


def test_a_declared_attachment_takes_memory_only_as_its_bytes_arrive_and_goes_with_the_stream(cluster):
    pid = cluster.worker("worker1").process.pid
    before = rss(pid)
    stop = threading.Event()

    def frames():
        yield declaring(1 << 30)  # 1 GiB declared, not a byte of it sent
        stop.wait(10)

    chan, call = open_stream(cluster, frames())
    try:
        time.sleep(1.5)
        assert rss(pid) - before < 64 * MIB
    finally:
        stop.set()
        call.cancel()
        chan.close()
    assert rpc.rpc_sync("worker1", remote.add, args=(1, 1)) == 2


def test_a_message_over_the_limit_is_resource_exhausted_at_once(cluster):
    def frames():
        yield declaring(64 << 30)  # over the 4 GiB a message may carry
        time.sleep(5)

    chan, call = open_stream(cluster, frames())
    try:
        start = time.monotonic()
        reply = pb.Frame.FromString(next(iter(call)))
        assert reply.response.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "exceeds" in reply.response.error.message and time.monotonic() - start < 3
    finally:
        call.cancel()
        chan.close()


def test_joining_with_a_name_or_rank_nobody_could_have_is_refused(cluster):
    from distautograd.errors import InvalidArgument
    from distautograd.transport import paths
    from distautograd.transport.deadlines import Deadlines
    from distautograd.transport.link import Link
    from distautograd.transport.security import Security

    security = Security(token=cluster.client_token())
    deadlines = Deadlines("test-joins")
    try:
        for join in (pb.Join(name="evil\n\x1b[31m", rank=-1), pb.Join(name="x" * 100_000, rank=-1),
                     pb.Join(name="far", rank=70_000)):
            link = Link("coordinator", lambda *a: None, deadlines)
            paths.Connector(security, "grpc", None, paths.Channels(security)).attach(
                link, paths.Endpoint("coordinator", cluster.coordinator, "distautograd.v1.Coordinator"),
                pb.Hello(), lambda: security.metadata())
            with pytest.raises(InvalidArgument):
                link.request(pb.Request(join=join), timeout=10).result()
            link.close(InvalidArgument("done"))
    finally:
        deadlines.stop()
