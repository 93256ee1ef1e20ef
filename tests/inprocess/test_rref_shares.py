"""The RRefs each peer holds to values a worker owns are counted while they live and given back after."""

import time

import pytest
import torch

from tests.helpers.inprocess import AGENTS, World, call


@pytest.fixture
def world():
    made = World(["r0", "r1", "r2"])
    yield made
    made.close()


def _settled(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return check()


def test_forks_count_for_their_holders_and_go_when_released(world):
    r0, r1, r2 = AGENTS["r0"], AGENTS["r1"], AGENTS["r2"]
    rref = r0.calls.remote(r1.world.resolve("r1"), torch.ones, (3,), {}, 10)
    assert torch.equal(rref.to_here(), torch.ones(3))
    assert r1.rrefs.held_by_peers.snapshot() == {f"rank {r0.rank}": 1}
    assert torch.equal(call("r0", "r2", _value_of, rref), torch.ones(3))  # r2 is handed a fork, and lets go
    assert _settled(lambda: r1.rrefs.held_by_peers.snapshot() == {f"rank {r0.rank}": 1})
    del rref
    assert _settled(lambda: r1.rrefs.held_by_peers.snapshot() == {})
    own = r1.calls.remote(r1.world.resolve("r1"), torch.ones, (1,), {}, 10)  # the owner's own: not a peer's
    own.to_here()
    assert r1.rrefs.held_by_peers.snapshot() == {}
    assert r2.rrefs.held_by_peers.snapshot() == {}


def test_a_peer_over_its_share_is_refused_and_others_are_not(world):
    from distautograd import errors

    r0, r1, r2 = AGENTS["r0"], AGENTS["r1"], AGENTS["r2"]
    r1.rrefs.held_by_peers.per_peer = 2
    kept = [r0.calls.remote(r1.world.resolve("r1"), torch.ones, (1,), {}, 10) for _ in range(2)]
    for rref in kept:
        rref.to_here()
    over = r0.calls.remote(r1.world.resolve("r1"), torch.ones, (1,), {}, 10)
    with pytest.raises(errors.ResourceExhausted, match=r"rank \d+ holds 2 RRefs here already, its share"):
        over.to_here()
    assert torch.equal(r2.calls.remote(r1.world.resolve("r1"), torch.ones, (1,), {}, 10).to_here(), torch.ones(1))


def _value_of(rref):
    return rref.to_here()
