"""The dispatcher counts each peer's requests and the bytes of their tensors until they are answered."""

from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport.dispatch import Deferred, Dispatcher
from distautograd.transport.shares import Shares


class FakeLink:
    def __init__(self, peer):
        self.peer = peer
        self.answers = []

    def respond(self, frame_id, response, attachments=()):
        self.answers.append((frame_id, response))


def make(calls=2, data=1000):
    pending = []

    def hold(link, body, attachments):
        pending.append(Deferred())
        return pending[-1]

    dispatcher = Dispatcher("w0", {"fetch_rref": (hold, True)}, calls=Shares("requests", calls),
                            data=Shares("bytes of tensors", data))
    return dispatcher, pending


REQUEST = pb.Request(fetch_rref=pb.FetchRRef(rref_id=1))


def test_a_peer_over_its_request_share_is_refused_others_are_not_and_answers_free_it():
    dispatcher, pending = make(calls=2)
    a, b = FakeLink("worker 'a' (rank 1)"), FakeLink("worker 'b' (rank 2)")
    for frame_id in (1, 2, 3):
        dispatcher(a, frame_id, REQUEST, [])
    assert [f for f, _ in a.answers] == [3]
    error = a.answers[0][1].error
    assert "its share (limit 2 per peer)" in error.message and "requests" in error.message
    dispatcher(b, 1, REQUEST, [])
    assert not b.answers and len(pending) == 3
    pending[0].resolve(None)
    assert dispatcher.calls.held(a.peer) == 1
    dispatcher(a, 4, REQUEST, [])
    assert len(pending) == 4  # room again


def test_the_bytes_a_peers_requests_carry_count_until_answered():
    dispatcher, pending = make(calls=10, data=1000)
    a = FakeLink("worker 'a' (rank 1)")
    dispatcher(a, 1, REQUEST, [bytearray(600)])
    dispatcher(a, 2, REQUEST, [bytearray(300), memoryview(bytearray(200))])
    assert len(pending) == 1 and a.answers[0][0] == 2
    assert "bytes of tensors" in a.answers[0][1].error.message and "asked for 500 more" in a.answers[0][1].error.message
    assert dispatcher.calls.held(a.peer) == 1 and dispatcher.data.held(a.peer) == 600  # the refused one took nothing
    pending[0].resolve(ValueError("no such rref"))
    assert dispatcher.data.held(a.peer) == 0 and dispatcher.calls.held(a.peer) == 0


def test_notifications_are_not_counted():
    dispatcher, pending = make(calls=1)
    a = FakeLink("worker 'a' (rank 1)")
    for _ in range(3):
        dispatcher(a, 0, REQUEST, [bytearray(10)])
    assert len(pending) == 3 and dispatcher.calls.snapshot() == {} and not a.answers
