"""A reading thread's CPU per frame (transport.frame_cpu, for the bench's small-call rows): a call's
own work counts as handling, not as reading, and nothing is added up while it is off."""

from __future__ import annotations

import time

import pytest
import torch

from distautograd.transport import frame_cpu
from tests.helpers.inprocess import World, call

BUSY_SECONDS = 0.05


def busy(x):
    """Spends BUSY_SECONDS of this thread's CPU time, then answers."""
    until = time.thread_time() + BUSY_SECONDS
    while time.thread_time() < until:
        pass
    return x + 1


@pytest.fixture
def world():
    world = World(["w0", "w1"], rpc_timeout=5)
    yield world
    frame_cpu.stop()
    world.close()


def test_a_calls_work_is_its_handling_and_each_frame_read_is_counted(world):
    frame_cpu.start()
    for _ in range(3):
        assert torch.equal(call("w0", "w1", busy, torch.ones(2)), torch.full((2,), 2.0))
    spent = frame_cpu.stop()
    assert spent["frames"] >= 6, spent  # each call read by w1, each reply read by w0
    assert spent["handling"] >= 3 * BUSY_SECONDS, spent  # run on the thread that read the call
    assert 0 < spent["reading"] < BUSY_SECONDS, spent  # the reads themselves: small, and never the call's work


def test_nothing_is_added_up_before_it_starts_or_after_it_stops(world):
    call("w0", "w1", busy, torch.ones(2))
    frame_cpu.start()
    assert frame_cpu.stop() == {"frames": 0, "reading": 0.0, "handling": 0.0}
    call("w0", "w1", busy, torch.ones(2))
    assert frame_cpu.stop() == {"frames": 0, "reading": 0.0, "handling": 0.0}
