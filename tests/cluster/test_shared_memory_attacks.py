"""Shared memory as a peer could abuse it: segments resized under the receiver, descriptors nobody claims,
a segment one peer could read after another gets it. The worker refuses, keeps its descriptors, keeps serving."""

import os

import pytest
import torch

from distautograd import rpc
from distautograd.transport import shm
from tests.helpers import remote
from tests.helpers.processes import poll_for
from tests.helpers.socket_peer import RawSocketPeer, call_with_shared_tensor, open_fds

pytestmark = pytest.mark.usefixtures("trainer")
MIB = 1 << 20


def worker1(cluster):
    from distautograd.runtime.current import get as current_agent

    entry = current_agent().world.entry(rpc.get_worker_info("worker1").id)
    return entry.unix_path, cluster.worker("worker1").process.pid


def test_an_unsealed_segment_is_refused_so_shrinking_it_cannot_crash_the_receiver(cluster):
    path, pid = worker1(cluster)
    peer = RawSocketPeer(path)
    fd = os.memfd_create("attacker")  # no seals: the sender could shrink it while it is mapped
    os.ftruncate(fd, MIB)
    try:
        peer.send_frame(call_with_shared_tensor(remote.checksum, MIB, MIB), fds=[fd])
        try:
            peer.receive_frame()
            accepted = True  # it was mapped: now the attack proper
        except EOFError:
            accepted = False  # refused: the worker ended that connection as a protocol error
        if accepted:
            os.ftruncate(fd, 0)
            again = call_with_shared_tensor(remote.checksum, MIB, MIB)
            again.request.attachments.shared[0].descriptor_attached = False  # the mapping it already has
            peer.send_frame(again)
            try:
                peer.receive_frame()
            except EOFError:
                pass
        assert not accepted, "an unsealed segment was mapped"
    finally:
        os.close(fd)
        peer.close()
    assert rpc.rpc_sync("worker1", remote.add, args=(1, 1)) == 2 and os.path.exists(f"/proc/{pid}")


def test_a_sealed_segment_of_another_size_than_announced_is_refused(cluster):
    path, _ = worker1(cluster)
    peer = RawSocketPeer(path)
    fd = os.memfd_create("attacker", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 4096)
    import fcntl

    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    try:
        peer.send_frame(call_with_shared_tensor(remote.checksum, MIB, MIB), fds=[fd])
        with pytest.raises(EOFError):
            peer.receive_frame()
    finally:
        os.close(fd)
        peer.close()
    assert rpc.rpc_sync("worker1", remote.add, args=(1, 1)) == 2


@pytest.mark.parametrize("kind", ["heartbeat", "push"])
def test_descriptors_no_buffer_claims_are_closed_at_once(cluster, kind):
    """Sent along with a heartbeat, or with a push the core reads and runs in the same call (the push
    lane, for a context the worker does not know)."""
    from distautograd.protocol.v1 import messages_pb2 as pb
    from tests.helpers.pushes import protobuf_push

    path, pid = worker1(cluster)
    before = open_fds(pid)
    peer = RawSocketPeer(path)
    spare = [os.open("/dev/null", os.O_RDONLY) for _ in range(60)]
    request = pb.Request(heartbeat=pb.Heartbeat()) if kind == "heartbeat" else protobuf_push(
        5, 1, None, [1], [torch.zeros(2)], 0, [])  # all zeros: no attachment to send
    try:
        for _ in range(20):  # 1,200 descriptors on frames that name no shared buffer
            peer.send_frame(pb.Frame(id=0, request=request), fds=spare)
        assert poll_for(lambda: open_fds(pid) <= before + 10, timeout=10), (before, open_fds(pid))
    finally:
        for fd in spare:
            os.close(fd)
        peer.close()
    assert rpc.rpc_sync("worker1", remote.add, args=(1, 1)) == 2


def test_a_segment_is_never_lent_to_a_second_peer():
    pool = shm.SegmentPool()
    a, b = object(), object()
    data = memoryview(bytearray(2 * MIB))
    first = pool.lend(data, a)
    pool.release(a, [first.lease])
    assert pool.lend(data, b).id != first.id  # b gets one of its own
    again = pool.lend(data, a)
    assert again.id == first.id  # a gets its warm one back
    pool.forget(a)
    pool.forget(b)


@pytest.mark.parametrize("count", [65, 200])
def test_a_message_with_many_big_tensors_arrives_whole(count):
    """A ResNet50's state is over 64 tensors of 1 MiB and more: every one needs its descriptor."""
    tensors = [torch.full((MIB // 4,), float(i)) for i in range(count)]
    back = rpc.rpc_sync("worker1", remote.echo, args=(tensors,))
    assert len(back) == count and all(torch.equal(t, torch.full((MIB // 4,), float(i))) for i, t in enumerate(back))
