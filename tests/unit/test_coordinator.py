"""The coordinator's logic in one process: members joined over in-process links (and one socket pair), passes recorded, aborted on departures."""

import queue
import socket
import threading
import time

import pytest

from distautograd import errors
from distautograd.coordinator.service import Coordinator, Settings
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import framing
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.link import Link
from distautograd.transport.security import Security


class _NoServer:
    """Stands in for the gRPC server: this test talks to the coordinator over in-process links only."""

    host = "127.0.0.1"

    def add_service(self, service, methods):
        pass


class Member:
    def __init__(self, coordinator: Coordinator, deadlines: Deadlines, name: str):
        self.received: "queue.Queue[pb.Request]" = queue.Queue()
        self.link = Link(name, lambda link, frame_id, request, attachments: self.received.put(request), deadlines)
        coordinator.attach(self.link)
        reply, _ = self.link.request(pb.Request(join=pb.Join(name=name, rank=-1, address="x:1")), timeout=5).result()
        self.rank = reply.join.rank

    def next(self, kind: str, timeout: float = 5.0) -> pb.Request:
        while True:
            request = self.received.get(timeout=timeout)
            if request.WhichOneof("body") == kind:
                return request


def start():
    coordinator = Coordinator(_NoServer(), Settings(security=Security(), transport="grpc", heartbeat_timeout=60))
    deadlines = Deadlines("test-member-deadlines")
    return coordinator, deadlines, [Member(coordinator, deadlines, f"w{i}") for i in range(3)]


def test_a_member_that_dies_aborts_the_passes_it_takes_part_in_naming_it():
    coordinator, deadlines, (root, victim, other) = start()
    try:
        event = pb.PassEvent(context_id=7, pass_id=9, participants=[root.rank, victim.rank, other.rank])
        root.link.notify(pb.Request(pass_event=event))
        unrelated = pb.PassEvent(context_id=8, pass_id=10, participants=[root.rank, other.rank])
        root.link.notify(pb.Request(pass_event=unrelated))
        root.link.request(pb.Request(heartbeat=pb.Heartbeat()), timeout=5).result()  # both events are in
        victim.link.close(errors.Unavailable("killed"))
        for member in (root, other):
            abort = member.next("abort_backward").abort_backward
            assert (abort.context_id, abort.pass_id) == (7, 9)
            assert "w1" in abort.error.message and "died" in abort.error.message
        assert coordinator.passes.in_flight(8) == 1 and coordinator.passes.in_flight(7) == 0
    finally:
        coordinator.stop()
        deadlines.stop()


def test_status_shows_each_context_with_its_participants_passes_and_leaves():
    coordinator, deadlines, (root, a, b) = start()
    try:
        start_event = pb.PassEvent(context_id=5, pass_id=1, participants=[root.rank, a.rank])
        end_event = pb.PassEvent(context_id=5, pass_id=1, ended=True, leaves={root.rank: 2, a.rank: 4})
        root.link.notify(pb.Request(pass_event=start_event))
        root.link.notify(pb.Request(pass_event=end_event))
        root.link.request(pb.Request(heartbeat=pb.Heartbeat()), timeout=5).result()
        (status,) = coordinator._status(pb.StatusRequest(), None).contexts
        assert status.context_id == 5 and status.passes == 1 and status.passes_in_flight == 0
        assert set(status.participants) >= {root.rank, a.rank}
        assert dict(status.leaves_with_gradients) == {root.rank: 2, a.rank: 4}
        root.link.notify(pb.Request(context_event=pb.ContextEvent(closed=[5])))
        root.link.request(pb.Request(heartbeat=pb.Heartbeat()), timeout=5).result()
        assert not coordinator._status(pb.StatusRequest(), None).contexts
    finally:
        coordinator.stop()
        deadlines.stop()


def test_requests_before_join_are_refused():
    coordinator, deadlines, _ = start()
    try:
        link = Link("stranger", lambda *a: None, deadlines)
        coordinator.attach(link)
        future = link.request(pb.Request(heartbeat=pb.Heartbeat()), timeout=5)
        try:
            future.result()
        except errors.FailedPrecondition as exc:
            assert "join first" in str(exc)
        else:
            raise AssertionError("a request before Join was served")
    finally:
        coordinator.stop()
        deadlines.stop()


# ---------------------------------------------------------------- unreachable is not dead

def _join(coordinator, deadlines, name, incarnation, rank=-1):
    received: "queue.Queue[pb.Request]" = queue.Queue()
    link = Link(name, lambda link, frame_id, request, attachments: received.put(request), deadlines)
    coordinator.attach(link)
    return link, link.request(pb.Request(join=pb.Join(name=name, rank=rank, address="x:1", incarnation=incarnation)),
                              timeout=5)


def _lasting(heartbeat_timeout=60.0, lease=300.0):
    coordinator = Coordinator(_NoServer(), Settings(security=Security(), transport="grpc", heartbeat_interval=0.05,
                                                    heartbeat_timeout=heartbeat_timeout, unreachable_timeout=lease))
    return coordinator, Deadlines("test-member-deadlines")


def _time_out(coordinator, rank):
    """The coordinator's end of a member's connection times out (keepalive), as a partition makes it;
    returns once the coordinator has judged it (on its deadlines thread)."""
    member = coordinator.membership.member(rank)
    member.link.close(errors.Unreachable("its connection timed out"))
    _until(lambda: member.entry.unreachable, "the member was marked unreachable")


def _until(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def _entry(coordinator, name):
    return next((m.entry for m in coordinator.membership.members() if m.entry.name == name), None)


def test_a_connection_that_timed_out_makes_a_member_unreachable_and_it_comes_back_whole():
    coordinator, deadlines = _lasting()
    try:
        link, joined = _join(coordinator, deadlines, "w0", incarnation=11)
        rank = joined.result()[0].join.rank
        _time_out(coordinator, rank)
        assert _entry(coordinator, "w0").unreachable and coordinator.membership.departed() == []
        again, rejoined = _join(coordinator, deadlines, "w0", incarnation=11, rank=rank)  # the same process
        assert rejoined.result()[0].join.rank == rank
        assert not _entry(coordinator, "w0").unreachable and coordinator.membership.departed() == []
        again.request(pb.Request(heartbeat=pb.Heartbeat()), timeout=5).result()  # the new link serves it
    finally:
        coordinator.stop()
        deadlines.stop()


def test_a_connection_closed_by_the_kernel_is_a_death():
    coordinator, deadlines = _lasting()
    try:
        link, joined = _join(coordinator, deadlines, "w0", incarnation=11)
        joined.result()
        link.close(errors.Unavailable("connection to w0 lost: the peer closed the connection"))
        _until(lambda: coordinator.membership.departed(), "the member was declared dead")
        (gone,) = coordinator.membership.departed()
        assert (gone.name, gone.failed, gone.incarnation) == ("w0", True, 11)
    finally:
        coordinator.stop()
        deadlines.stop()


def test_a_new_process_under_the_name_of_an_unreachable_one_replaces_it_and_a_live_one_is_refused():
    coordinator, deadlines = _lasting()
    try:
        first, joined = _join(coordinator, deadlines, "w0", incarnation=11)
        joined.result()
        _, refused = _join(coordinator, deadlines, "w0", incarnation=12)  # the first one is alive: refused
        with pytest.raises(errors.AlreadyExists, match="not unique"):
            refused.result()
        _time_out(coordinator, 0)
        _, replacing = _join(coordinator, deadlines, "w0", incarnation=12)
        replacing.result()
        (gone,) = coordinator.membership.departed()
        assert gone.incarnation == 11 and "replaced by a new process" in gone.reason
        assert _entry(coordinator, "w0").incarnation == 12 and not _entry(coordinator, "w0").unreachable
    finally:
        coordinator.stop()
        deadlines.stop()


def test_silence_is_unreachable_at_the_heartbeat_timeout_dead_at_the_lease_and_a_heartbeat_heals():
    coordinator, deadlines = _lasting(heartbeat_timeout=0.3, lease=0.6)
    try:
        quiet, joined = _join(coordinator, deadlines, "quiet", incarnation=1)
        joined.result()
        healed, joined = _join(coordinator, deadlines, "healed", incarnation=2)
        joined.result()
        deadline = time.monotonic() + 5
        while not (_entry(coordinator, "healed") or pb.WorkerEntry()).unreachable and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _entry(coordinator, "healed").unreachable and _entry(coordinator, "quiet").unreachable
        assert coordinator.membership.departed() == []  # only unreachable so far
        healed.request(pb.Request(heartbeat=pb.Heartbeat()), timeout=5).result()
        assert not _entry(coordinator, "healed").unreachable
        while _entry(coordinator, "quiet") is not None and time.monotonic() < deadline:
            healed.notify(pb.Request(heartbeat=pb.Heartbeat()))
            time.sleep(0.05)
        (gone,) = coordinator.membership.departed()
        assert gone.name == "quiet" and "unreachable for 0.6 s (unreachable_timeout)" in gone.reason
        assert _entry(coordinator, "healed") is not None
    finally:
        coordinator.stop()
        deadlines.stop()



def test_a_member_whose_connection_takes_nothing_is_unreachable_after_the_heartbeat_timeout():
    """A member that reads nothing (stopped, or cut off with its buffers full) would hold every Join,
    verdict and stop behind the coordinator's send stuck in its socket until the kernel gave up:
    minutes. A send that moves no byte for the heartbeat timeout ends that connection instead, and
    the member is unreachable (it may join again), not dead. It keeps sending heartbeats, so only the
    stalled send can find it out: the verdict is a broadcast of its own, made while the stalled
    broadcast held the send lock (it deadlocked the coordinator once)."""
    coordinator, deadlines = _lasting(heartbeat_timeout=1.0)
    ours, theirs = socket.socketpair()
    beating = threading.Event()

    def heartbeats():
        frame = pb.Frame(request=pb.Request(heartbeat=pb.Heartbeat())).SerializeToString()
        while not beating.wait(0.2):
            try:
                framing.send_all(theirs, [framing.LENGTH.pack(len(frame)), frame])
            except OSError:
                return

    try:
        for end in (ours, theirs):  # small buffers: a few snapshots fill them
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        coordinator._accept_socket(ours, pb.Hello())
        join = pb.Frame(id=1, request=pb.Request(join=pb.Join(name="cut-off", rank=-1, address="x:1", incarnation=5)))
        header = join.SerializeToString()
        framing.send_all(theirs, [framing.LENGTH.pack(len(header)), header])
        reply = framing.Reader(theirs, deadline=time.monotonic() + 5).message(pb.Frame)
        rank = reply.response.join.rank
        assert rank >= 0  # a member; from now on it reads nothing, and beats
        threading.Thread(target=heartbeats, daemon=True).start()
        stuck = coordinator.membership.member(rank).link
        others, started = [], time.monotonic()
        while not stuck.closed:  # joins go on until a snapshot to it stalls past the timeout
            assert time.monotonic() - started < 30, "the snapshots never filled the socket's buffers"
            before = time.monotonic()
            link, joined = _join(coordinator, deadlines, f"w{len(others)}", incarnation=len(others) + 1)
            assert joined.result(timeout=10)[0].join.rank >= 0
            assert time.monotonic() - before < 1.0 + 5  # at most one stall's wait, not the kernel's minutes
            others.append(link)
        assert isinstance(stuck.closed_with, errors.Unreachable), stuck.closed_with
        assert "took no byte for 1 s" in str(stuck.closed_with)
        deadline = time.monotonic() + 5
        while not (_entry(coordinator, "cut-off") or pb.WorkerEntry()).unreachable:
            assert time.monotonic() < deadline, "the stalled member was never marked unreachable"
            time.sleep(0.02)
        assert coordinator.membership.departed() == []
        link, joined = _join(coordinator, deadlines, "late", incarnation=99)
        assert joined.result(timeout=5)[0].join.rank >= 0  # nothing waits on it any more
        before = time.monotonic()
        coordinator.stop()
        assert time.monotonic() - before < 5
    finally:
        beating.set()
        coordinator.stop()
        deadlines.stop()
        theirs.close()


def test_a_process_of_another_version_is_refused_naming_both():
    coordinator, deadlines = _lasting()
    try:
        received = queue.Queue()
        link = Link("old", lambda link, frame_id, request, attachments: received.put(request), deadlines)
        coordinator.attach(link)
        joined = link.request(pb.Request(join=pb.Join(name="old", rank=-1, address="x:1", version="0.0.1")), timeout=5)
        with pytest.raises(errors.FailedPrecondition, match=r"'old' runs distautograd 0\.0\.1, this world 0\.2\.0"):
            joined.result()
    finally:
        coordinator.stop()
        deadlines.stop()


def test_a_group_started_with_a_world_size_refuses_a_join_without_one_even_after_its_members_left():
    """As torch's store remembers a static group once its members are gone (torch's
    test_dynamic_and_static_init_rpc_together: the static ones may have shut down before the dynamic one asks)."""
    from types import SimpleNamespace

    from distautograd.coordinator.membership import Membership

    def link():
        return SimpleNamespace(peer_rank=None, peer="", try_notify=lambda *args: True)

    members = Membership(on_departed=lambda departure: None)
    members.join(link(), pb.Join(name="a", rank=0, world_size=1, address="x:1"))
    members.depart(0, "shut down", failed=False)
    with pytest.raises(errors.InvalidArgument, match="mixes statically and dynamically initialized members"):
        members.join(link(), pb.Join(name="b", rank=-1, address="x:2"))
