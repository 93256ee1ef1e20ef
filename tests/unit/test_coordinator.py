"""The coordinator's logic in one process: members joined over in-process links, passes recorded, aborted on departures."""

import queue

from distautograd import errors
from distautograd.coordinator.service import Coordinator, Settings
from distautograd.protocol.v1 import messages_pb2 as pb
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
