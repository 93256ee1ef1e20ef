"""A reading thread's CPU per frame (transport.frame_cpu, for the bench's small-call rows): a call's
own work counts as handling, not as reading, and as its run among the stages its handling marks;
nothing is added up while it is off."""

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
    # A reading thread already waiting for its next frame when the adding up starts reads that frame
    # untimed: one call first, so every reading thread of the two connections waits inside the timing.
    frame_cpu.start()
    call("w0", "w1", busy, torch.ones(2))
    frame_cpu.start()
    for _ in range(3):
        assert torch.equal(call("w0", "w1", busy, torch.ones(2)), torch.full((2,), 2.0))
    spent = frame_cpu.stop()
    # each call read by w1 (each reply read by w0 too, but now and then one of those is not counted: the
    # open question in frame_cpu's docstring, which the per-frame averages do not depend on)
    assert spent["frames"] >= 3, spent
    assert spent["handling"] >= 3 * BUSY_SECONDS, spent  # run on the thread that read the call
    assert 0 < spent["reading"] < BUSY_SECONDS, spent  # the reads themselves: small, and never the call's work
    stages = frame_cpu.stages()
    # each call's handling marked its stages in order: its work is the run's, nothing else's
    assert set(stages) == {(frame_cpu.READ, "dispatched"), ("dispatched", "decoded"), ("decoded", "ran"),
                           ("ran", "encoded"), ("encoded", frame_cpu.END)}, stages
    assert stages[("decoded", "ran")] >= 3 * BUSY_SECONDS, stages
    assert sum(stages.values()) - stages[("decoded", "ran")] < BUSY_SECONDS, stages
    assert sum(stages.values()) <= spent["handling"] + 1e-6, (stages, spent)  # the replies' handling marks nothing


def test_nothing_is_added_up_before_it_starts_or_after_it_stops(world):
    call("w0", "w1", busy, torch.ones(2))
    frame_cpu.start()
    assert frame_cpu.stop() == {"frames": 0, "reading": 0.0, "handling": 0.0}
    assert frame_cpu.stages() == {}
    call("w0", "w1", busy, torch.ones(2))
    assert frame_cpu.stop() == {"frames": 0, "reading": 0.0, "handling": 0.0}
    assert frame_cpu.stages() == {}
