"""A reading thread's CPU per frame (transport.frame_cpu, for the bench's small-call rows): a call's
own work counts as handling, not as reading, and as its run among the stages its handling marks;
nothing is added up while it is off."""

from __future__ import annotations

import threading
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
    spent = frame_cpu.stop()  # waits for the last reply's reader, which woke this thread before it was done
    assert spent["frames"] >= 6, spent  # each call read by w1 and each reply read by w0
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


def test_stop_waits_for_a_frame_another_thread_still_handles_and_not_for_its_own():
    deadline = time.monotonic() + 5  # frames an earlier test's readers still handle: done first
    while frame_cpu._open and time.monotonic() < deadline:
        time.sleep(0.01)
    inside, release = threading.Event(), threading.Event()

    def handled_elsewhere():
        frame_cpu.read()
        inside.set()
        release.wait(5)

    frame_cpu.start()
    reader = threading.Thread(target=frame_cpu.timed, args=(handled_elsewhere,))
    reader.start()
    assert inside.wait(5)
    threading.Timer(0.1, release.set).start()  # the reply's reader, done a moment after its caller woke
    assert frame_cpu.stop()["frames"] == 1
    reader.join(5)

    stopped = []

    def stops_itself():  # the bench's stop arrives as a call, read and run by the thread stop waits for
        frame_cpu.read()
        began = time.monotonic()
        stopped.append((frame_cpu.stop(), time.monotonic() - began))

    frame_cpu.start()
    frame_cpu.timed(stops_itself)
    spent, waited = stopped[0]
    assert spent["frames"] == 0 and waited < frame_cpu.STOP_WAIT_SECONDS / 2, stopped
