"""Per-peer shares: one peer at its share is refused, naming the resource and limit; others keep theirs."""

import threading

import pytest

from distautograd.transport.security import is_loopback_peer
from distautograd.transport.shares import Shares


def test_a_peer_at_its_share_is_refused_and_the_others_keep_theirs():
    shares = Shares("requests", per_peer=2, total=5)
    assert shares.take("a") is None and shares.take("a") is None
    refused = shares.take("a")
    assert refused == "a holds 2 requests here already, its share (limit 2 per peer); wait for some to finish"
    assert shares.take("b") is None and shares.take("b") is None
    assert shares.snapshot() == {"a": 2, "b": 2}


def test_all_peers_together_stop_at_the_whole():
    shares = Shares("streams", per_peer=2, total=3)
    for peer in ("a", "a", "b"):
        assert shares.take(peer) is None
    assert shares.take("c") == "3 streams are held here already (limit 3 in all)"
    shares.give_back("a")
    assert shares.take("c") is None and shares.held("c") == 1


def test_giving_back_frees_the_share_and_extra_returns_change_nothing():
    shares = Shares("contexts", per_peer=1)
    assert shares.take("a") is None and shares.take("a") is not None
    shares.give_back("a")
    shares.give_back("a")  # one too many: ignored, never a negative count
    assert shares.snapshot() == {} and shares.held("a") == 0
    assert shares.take("a") is None and shares.take("a") is not None


def test_shares_hold_under_concurrent_takers():
    shares = Shares("requests", per_peer=50, total=120)
    got = []

    def take(peer):
        for _ in range(100):
            if shares.take(peer) is None:
                got.append(peer)

    threads = [threading.Thread(target=take, args=(p,)) for p in ("a", "b", "c", "a")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(got.count(p) for p in "abc") <= 50 and len(got) == 120
    assert shares.snapshot() == {p: got.count(p) for p in "abc" if got.count(p)}


@pytest.mark.parametrize("per_peer, total", [(0, None), (5, 4)])
def test_a_share_that_cannot_work_is_refused(per_peer, total):
    with pytest.raises(ValueError, match="cannot work"):
        Shares("requests", per_peer, total)


@pytest.mark.parametrize("peer, local", [
    ("ipv4:127.0.0.1:5555", True), ("ipv6:%5B::1%5D:40000", True), ("ipv6:%5Bfe80::1%5D:1", False), ("ipv4:127.3.2.1:1", True), ("ipv6:[::1]:80", True),
    ("ipv6:[::ffff:127.0.0.1]:9", True), ("unix:/tmp/s", True), ("ipv4:10.0.0.2:1", False),
    ("ipv6:[fe80::1]:3", False), ("ipv4:128.0.0.1:1", False), ("", False), ("ipv6:[::2]:1", False),
])
def test_which_grpc_callers_are_on_loopback(peer, local):
    assert is_loopback_peer(peer) is local
