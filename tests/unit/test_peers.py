"""A peer's message that arrives before this process has its rank waits for it (torch suite flake)."""

import threading
from types import SimpleNamespace

from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.peers import COORDINATOR, Peers
from distautograd.runtime.world import WorldView
from distautograd.transport.deadlines import Deadlines


def _peers():
    peers = Peers("worker3", WorldView(), connector=SimpleNamespace(channels=SimpleNamespace(close=lambda: None)), deadlines=Deadlines(), resolve_type=None,
                  stopping=threading.Event(), max_message_bytes=1 << 20)
    seen = []
    peers.deliver = lambda link, frame_id, request, attachments: seen.append((peers.rank, frame_id))
    return peers, seen


def _request(link, frame_id):
    link.deliver(pb.Frame(id=frame_id, request=pb.Request(release_context=pb.ReleaseContext())), [])


def test_a_peers_request_waits_until_the_join_reply_gave_this_process_its_rank():
    peers, seen = _peers()
    link = peers.new_link("worker 'worker2' (rank 2)", 2)
    reader = threading.Thread(target=_request, args=(link, 7))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive() and seen == []  # held: this process does not know it is rank 3 yet
    peers.joined(3)
    reader.join(5)
    assert seen == [(3, 7)]
    _request(link, 8)  # joined: no wait
    assert seen[-1] == (3, 8)


def test_the_coordinators_messages_are_never_held():
    peers, seen = _peers()
    _request(peers.new_link("the coordinator", COORDINATOR), 5)  # the world update before the join reply
    assert seen == [(-1, 5)]


def test_closing_releases_a_held_request():
    peers, seen = _peers()
    link = peers.new_link("worker 'worker2' (rank 2)", 2)
    reader = threading.Thread(target=_request, args=(link, 9))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()
    peers.close()  # the join failed: the held request goes on (to be refused) instead of waiting on
    reader.join(5)
    assert not reader.is_alive() and seen == [(-1, 9)]
