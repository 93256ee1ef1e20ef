"""Fair to every caller: one member's waiting calls, streams or contexts take its own share, never the others'.

Each flood runs against a real worker while another caller keeps working; the flooder gets
RESOURCE_EXHAUSTED naming the resource and its limit, and what it held is freed after it goes.
"""

import statistics
import time

import grpc
import pytest

from distautograd import rpc
from distautograd.ids import IdMint
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport.dispatch import MAX_UNARY, PEER_UNARY
from distautograd.transport.grpc_server import MAX_STREAMS, PEER_NAME_KEY, PEER_RANK_KEY, PEER_STREAMS
from tests.helpers import remote, wire_client
from tests.helpers.processes import poll_for

pytestmark = pytest.mark.usefixtures("trainer")


def serving(address: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as chan:
        reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def as_member(token, name, rank):
    return wire_client.metadata(token) + ((PEER_NAME_KEY, name), (PEER_RANK_KEY, str(rank)))


def step_latency(rounds=50):
    """Median seconds of the other member's training step: a forward through worker1, a distributed
    backward, the gradient read back."""
    import torch

    from distautograd import autograd as dist_autograd

    w = torch.ones(4, requires_grad=True)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        with dist_autograd.context() as ctx:
            loss = rpc.rpc_sync("worker1", torch.mul, args=(w, 2.0)).sum()
            dist_autograd.backward(ctx, [loss])
            assert torch.equal(dist_autograd.get_gradients(ctx)[w], torch.full((4,), 2.0))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_one_callers_waiting_fetches_take_its_share_and_every_other_caller_keeps_working(cluster):
    address = cluster.worker("worker1").address
    token = cluster.client_token()
    ghost = IdMint(rpc.get_worker_info().id)  # ids of RRefs that will never be created
    unloaded = step_latency()
    flooder = wire_client.channel(address)
    method = flooder.unary_unary("/distautograd.v1.Worker/Call")
    pending = []
    try:
        for _ in range(300):
            frame = pb.Frame(id=1, request=pb.Request(fetch_rref=pb.FetchRRef(rref_id=ghost())))
            pending.append(method.future(frame.SerializeToString(), metadata=as_member(token, "flooder", 90),
                                         timeout=60))
        assert poll_for(lambda: sum(f.done() for f in pending) >= 300 - PEER_UNARY, timeout=10)
        refused = [f for f in pending if f.done()]
        assert len(refused) == 300 - PEER_UNARY
        assert all(f.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED for f in refused)
        assert f"its share (limit {PEER_UNARY} per peer)" in refused[0].exception().details()
        assert "Worker.Call requests" in refused[0].exception().details()
        # every other caller keeps its share: a tool's Worker.Call, a member's stream, the health check
        reply = wire_client.unary(address, wire_client.call_frame(remote.add, 2, 3).SerializeToString(), token)
        assert not pb.Frame.FromString(reply).response.HasField("error")
        loaded = step_latency()
        print(f"\nother member's training step while one floods fetches: {loaded * 1e3:.2f} ms median "
              f"(unloaded {unloaded * 1e3:.2f} ms)")
        assert loaded < 2 * unloaded
        assert serving(address)
    finally:
        for future in pending:
            future.cancel()
        flooder.close()
    # gone: its slots are free again
    assert poll_for(lambda: not pb.Frame.FromString(wire_client.unary(
        address, wire_client.call_frame(remote.add, 1, 1).SerializeToString(), token,
        metadata_extra=((PEER_NAME_KEY, "flooder"), (PEER_RANK_KEY, "90")))).response.HasField("error"), timeout=10)


def test_all_callers_together_still_stop_at_the_process_wide_bound(cluster):
    address = cluster.worker("worker1").address
    token = cluster.client_token()
    ghost = IdMint(rpc.get_worker_info().id)
    chan = wire_client.channel(address)
    method = chan.unary_unary("/distautograd.v1.Worker/Call")
    callers = MAX_UNARY // PEER_UNARY + 1
    pending = []
    try:
        for caller in range(callers):
            for _ in range(PEER_UNARY):
                frame = pb.Frame(id=1, request=pb.Request(fetch_rref=pb.FetchRRef(rref_id=ghost())))
                pending.append(method.future(frame.SerializeToString(),
                                             metadata=as_member(token, f"caller{caller}", 100 + caller), timeout=60))
        assert poll_for(lambda: sum(f.done() for f in pending) >= PEER_UNARY, timeout=10)
        time.sleep(0.5)
        refused = [f for f in pending if f.done()]
        assert len(refused) == callers * PEER_UNARY - MAX_UNARY
        assert f"answering {MAX_UNARY} Worker.Call requests already" in refused[0].exception().details()
        assert serving(address)
    finally:
        for future in pending:
            future.cancel()
        chan.close()


def test_one_callers_streams_take_its_share_and_the_whole_is_still_bounded(cluster):
    address = cluster.worker("worker1").address
    token = cluster.client_token()
    stops = []

    def silent():  # a stream that sends nothing until the test ends it
        import threading

        stop = threading.Event()
        stops.append(stop)

        def frames():
            stop.wait(60)
            return
            yield
        return frames()

    chan = wire_client.channel(address)
    connect = chan.stream_stream("/distautograd.v1.Worker/Connect")
    streams = []
    try:
        mine = [connect(silent(), metadata=as_member(token, "greedy", 80), timeout=60) for _ in range(PEER_STREAMS + 4)]
        streams += mine
        assert poll_for(lambda: sum(s.done() for s in mine) >= 4, timeout=10)
        time.sleep(0.5)
        refused = [s for s in mine if s.done()]
        assert len(refused) == 4 and all(s.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for s in refused)
        assert f"holds {PEER_STREAMS} streams here already, its share (limit {PEER_STREAMS} per peer)" in \
            refused[0].details()
        others = [connect(silent(), metadata=as_member(token, f"other{i // PEER_STREAMS}", 81 + i // PEER_STREAMS),
                          timeout=60) for i in range(MAX_STREAMS)]
        streams += others
        over = PEER_STREAMS  # the greedy caller holds that many of the whole already
        assert poll_for(lambda: sum(s.done() for s in others) >= over, timeout=10)
        time.sleep(0.5)
        full = [s for s in others if s.done()]
        assert len(full) == over and f"{MAX_STREAMS} streams open already" in full[0].details()
        assert serving(address)
        assert rpc.rpc_sync("worker1", remote.add, args=(1, 2)) == 3  # members' own connections are sockets
    finally:
        for stop in stops:
            stop.set()
        for s in streams:
            s.cancel()
        chan.close()


def _call_in_context(address, token, context_id, metadata=None):
    call = wire_client.call_frame(remote.add, 1, 1)
    call.request.call.context_id = context_id
    reply = wire_client.unary(address, call.SerializeToString(), token, metadata_extra=metadata or ())
    return pb.Frame.FromString(reply).response


def test_a_context_whose_creator_is_no_member_is_refused(cluster):
    worker = cluster.worker("worker1")
    response = _call_in_context(worker.address, cluster.client_token(), IdMint(4000)())
    assert response.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "names rank 4000 as its creator, which is no member of the world" in response.error.message


def test_contexts_one_peer_brings_count_against_its_share_and_empty_ones_expire(capsys):
    from distautograd.cli import main as cli_main
    from distautograd.encoding import pickling
    from distautograd.encoding.allowlist import Allowlist
    from distautograd.testing import start_cluster

    share = 20
    small = start_cluster(1, allowed_modules=["tests"], worker_args=["--context-ttl", "1", "--peer-contexts", str(share)])
    try:
        token = small.client_token()
        worker = small.workers[0]
        flooder = ((PEER_NAME_KEY, "flooder"), (PEER_RANK_KEY, "70"))
        mint = IdMint(worker.rank)  # a member's ids: nested calls legitimately carry those
        answers = [_call_in_context(worker.address, token, mint(), flooder) for _ in range(share + 5)]
        refused = [a for a in answers if a.HasField("error")]
        assert len(refused) == 5
        assert refused[0].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert f"holds {share} autograd contexts here already, its share (limit {share} per peer)" in \
            refused[0].error.message
        other = _call_in_context(worker.address, token, mint(), ((PEER_NAME_KEY, "other"), (PEER_RANK_KEY, "71")))
        assert not other.HasField("error"), other.error.message  # another peer keeps its share

        def status_counts(n) -> bool:
            capsys.readouterr()
            assert cli_main(["status", "--coordinator", small.coordinator]) == 0
            row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("worker1 "))
            return row.split()[-4] == str(n)  # NAME RANK ADDRESS HEARTBEAT s CONTEXTS PASSES MESSAGES ROLE

        assert poll_for(lambda: status_counts(share + 1), timeout=5, interval=0.2)
        capsys.readouterr()
        assert cli_main(["status", "--coordinator", small.coordinator]) == 0
        assert f"worker1: rank 70 holds {share} of {share} autograd contexts" in capsys.readouterr().out
        # nothing was ever held in them: idle for the TTL, they go, and the flooder's share is free again
        assert poll_for(lambda: status_counts(0), timeout=15, interval=0.3)
        assert not _call_in_context(worker.address, token, mint(), flooder).HasField("error")

        def contexts_now():
            call = wire_client.call_frame(remote.debug_info)
            reply = pb.Frame.FromString(wire_client.unary(worker.address, call.SerializeToString(), token)).response
            return pickling.loads(reply.value.pickle, Allowlist())["num_autograd_contexts"]

        assert contexts_now() == 1
    finally:
        small.stop()


def test_rrefs_one_peer_holds_take_its_share_memory_stays_within_it_and_letting_go_frees_it(capsys):
    import torch

    from distautograd.cli import main as cli_main
    from distautograd.testing import start_cluster

    share, size = 30, 1 << 18  # 30 RRefs to values of 1 MiB each
    small = start_cluster(1, allowed_modules=["tests"], worker_args=["--peer-rrefs", str(share)])
    try:
        token = small.client_token()
        worker = small.workers[0]
        flooder = ((PEER_NAME_KEY, "flooder"), (PEER_RANK_KEY, "70"))
        mint = IdMint(70)  # the ids the flooder's process makes

        def remote_zeros(metadata, ids):
            frame = wire_client.call_frame(torch.zeros, size)
            frame.request.call.create_rref, frame.request.call.creator_fork = ids
            reply = wire_client.unary(worker.address, frame.SerializeToString(), token, metadata_extra=metadata)
            return pb.Frame.FromString(reply).response

        before = rss(worker.process.pid)
        made = []
        refused = []
        for _ in range(200):
            ids = (mint(), mint())
            answer = remote_zeros(flooder, ids)
            (refused if answer.HasField("error") else made).append((ids, answer))
        grown = rss(worker.process.pid) - before
        with capsys.disabled():
            print(f"\nworker memory after 200 remote() of 1 MiB from one peer with a share of {share}: "
                  f"+{grown / (1 << 20):.1f} MiB")
        assert len(made) == share and len(refused) == 200 - share
        error = refused[0][1].error
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert f"holds {share} RRefs here already, its share (limit {share} per peer)" in error.message
        assert grown < (share + 40) << 20  # the share's values, not 200 of them
        other = remote_zeros(((PEER_NAME_KEY, "other"), (PEER_RANK_KEY, "71")), (IdMint(71)(), IdMint(71)()))
        assert not other.HasField("error"), other.error.message

        def status_shows(text) -> bool:
            capsys.readouterr()
            assert cli_main(["status", "--coordinator", small.coordinator]) == 0
            return text in capsys.readouterr().out

        assert poll_for(lambda: status_shows(f"rank 70 holds {share} of {share} RRefs"), timeout=5)
        # the flooder lets go of its forks: its share is free again
        changes = [pb.ForkChange(rref_id=rref_id, fork_id=fork_id, add=False) for (rref_id, fork_id), _ in made]
        frame = pb.Frame(id=1, request=pb.Request(rref_forks=pb.RRefForks(changes=changes)))
        reply = pb.Frame.FromString(wire_client.unary(worker.address, frame.SerializeToString(), token,
                                                      metadata_extra=flooder)).response
        assert not reply.HasField("error"), reply.error.message
        assert not remote_zeros(flooder, (mint(), mint())).HasField("error")
    finally:
        small.stop()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
