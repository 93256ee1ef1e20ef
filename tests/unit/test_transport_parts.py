"""The transport's small parts on their own: the deadline clock, the pool of receive buffers, local links,
and lending a connection's reading to a call, with both watchdogs (Python's and the core's)."""

import gc
import os
import sys
import threading
import time
import weakref

import pytest
import torch

from distautograd.transport import shm
from distautograd.transport.deadlines import Deadlines


def test_deadlines_fire_in_order_and_cancelled_ones_never():
    clock, fired, done = Deadlines("test-deadlines"), [], threading.Event()
    try:
        clock.schedule(0.05, lambda: fired.append("second"))
        clock.schedule(0.01, lambda: fired.append("first"))
        clock.cancel(clock.schedule(0.02, lambda: fired.append("cancelled")))
        clock.schedule(0.1, done.set)
        assert done.wait(5)
        assert fired == ["first", "second"]
        assert clock.pending() == 0
    finally:
        clock.stop()


def test_a_deadline_earlier_than_the_one_the_clock_sleeps_for_wakes_it_and_a_later_one_fires_after_it():
    """The clock's thread is woken only for a deadline earlier than the one it sleeps until: one
    scheduled while it sleeps for an hour fires on time, and one scheduled after the deadline it
    sleeps for was cancelled fires when it wakes for that one and sees it."""
    clock, fired = Deadlines("test-deadlines"), []
    soon, later = threading.Event(), threading.Event()
    try:
        clock.schedule(3600, lambda: fired.append("an hour"))
        time.sleep(0.05)  # the thread sleeps for the hour now
        clock.schedule(0.01, soon.set)
        assert soon.wait(5)
        clock.cancel(clock.schedule(0.2, lambda: fired.append("cancelled")))
        clock.schedule(0.3, later.set)
        assert later.wait(5) and fired == []
        assert clock.pending() == 1  # the hour's, still waiting
    finally:
        clock.stop()


def test_a_cancelled_deadline_lets_go_of_its_callback_at_once():
    """A call answered in time must not keep what its timeout callback refers to until the deadline."""

    class Call:
        pass

    clock = Deadlines("test-deadlines")
    try:
        handles, refs = [], []
        for _ in range(3000):  # past the size where the heap is compacted
            call = Call()
            refs.append(weakref.ref(call))
            handles.append(clock.schedule(3600, lambda call=call: call))
        del call
        for handle in handles:
            clock.cancel(handle)
        gc.collect()
        assert all(ref() is None for ref in refs)
        assert clock.pending() == 0
        assert len(clock._heap) < 3000  # mostly-dead heaps are rebuilt
    finally:
        clock.stop()


def test_a_receive_buffer_returns_to_the_pool_only_when_its_last_tensor_is_gone():
    pool = shm.ReceiveBuffers()
    first = pool.get(3 << 20)
    address = first.__array_interface__["data"][0]
    tensor = torch.frombuffer(memoryview(first).cast("B"), dtype=torch.uint8).view(torch.float32)[10:]
    del first
    gc.collect()
    second = pool.get(3 << 20)
    assert second.__array_interface__["data"][0] != address  # still in use through the tensor
    del tensor
    gc.collect()
    third = pool.get(3 << 20)
    assert third.__array_interface__["data"][0] == address  # reused once free, not before
    assert len(third) == 3 << 20


def test_copy_into_copies_every_byte_split_or_not():
    for size in (5, 1 << 20, 40 << 20 | 3):
        src = torch.randint(0, 256, (size,), dtype=torch.uint8)
        dst = bytearray(size)
        shm.copy_into(memoryview(dst), memoryview(src.numpy()))
        assert torch.equal(torch.frombuffer(dst, dtype=torch.uint8), src)


def test_local_links_deliver_records_in_the_senders_thread_and_the_rest_on_their_own():
    from distautograd.protocol.v1 import messages_pb2 as pb
    from distautograd.transport import local
    from distautograd.transport.link import Link

    seen = []
    deadlines = Deadlines("test-local-links")
    try:
        sender = Link("b", lambda *a: None, deadlines)
        receiver = Link("a", lambda link, frame_id, request, attachments: seen.append(
            (request.WhichOneof("body"), threading.current_thread().name)), deadlines)
        local.connect(sender, receiver, inline_from_a=("pass_event",))
        sender.notify(pb.Request(pass_event=pb.PassEvent(context_id=1)))
        assert seen == [("pass_event", threading.current_thread().name)]  # at once, in this thread
        sender.notify(pb.Request(heartbeat=pb.Heartbeat()))
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen[1][0] == "heartbeat" and seen[1][1] != threading.current_thread().name
    finally:
        deadlines.stop()


def test_reading_is_lent_to_a_call_and_given_away_when_it_waits_or_runs_long():
    from distautograd.transport import reading

    continued = threading.Event()
    assert reading.lend() is None  # not a reader: the call goes to the pool
    role = reading.Role(continued.set)
    with reading.holding(role):
        lent = reading.lend()
        assert lent is role and not role.reading_here
        reading.reclaim(role)  # a quick call: this thread reads on, nobody was woken
        assert role.reading_here and not continued.is_set()
        reading.lend()
        reading.before_blocking()  # the call waits for another worker: reading goes on elsewhere
        assert continued.wait(5) and not role.reading_here
    slow = reading.Role(threading.Event().set)
    with reading.holding(slow):
        reading.lend()
        time.sleep(reading.LENT_SECONDS * 20)  # runs long: the watchdog gives reading away
        reading.reclaim(slow)
        assert not slow.reading_here


def _watches():
    """Each watch of lent reading this build has: Python's, and the core's where it is built."""
    from distautograd import native
    from distautograd.transport import reading

    yield "python", reading.Watch
    if native.core is not None:
        yield "native", native.core.LentWatch


class _Refusing:
    """A lent role whose giving away fails (as starting a standby thread fails at shutdown); counts the tries."""

    tries = 0

    def give_away(self):
        self.tries += 1
        raise RuntimeError("can't start new thread")


@pytest.mark.parametrize("kind", ["python", "native"])
def test_a_watch_gives_away_a_role_lent_too_long_once_and_never_one_taken_back_in_time(kind, monkeypatch, caplog):
    from distautograd.transport import reading

    make = dict(_watches()).get(kind)
    if make is None:
        pytest.skip("the compiled core is not built")
    idle = 0.05
    watch = make(reading.LENT_SECONDS, idle, reading.give_away_late)
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)  # where the core would say `late` failed

    def lent_role(continued):
        role = reading.Role(continued)
        role.state = reading._LENT  # as lend() leaves it
        return role

    quick_went, slow_went = threading.Event(), threading.Event()
    quick = lent_role(quick_went.set)
    held = sys.getrefcount(quick)
    watch.add(quick)
    assert sys.getrefcount(quick) == held + 1 and watch.lent() == 1  # the watch holds it while it is lent
    watch.forget(quick)  # taken back within the limit
    watch.forget(quick)  # a second forget changes nothing
    assert sys.getrefcount(quick) == held and watch.lent() == 0
    refusing = _Refusing()
    watch.add(refusing)
    watch.add(lent_role(slow_went.set))  # nobody else holds this one: the watch must keep it alive
    assert slow_went.wait(1), "the late role was not given away within 1 s (its limit is 2 ms)"
    assert not quick_went.is_set()
    deadline = time.monotonic() + 5
    while watch.lent() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watch.lent() == 0
    again = lent_role(threading.Event().set)  # after a failure, the watch still watches
    watch.add(again)
    deadline = time.monotonic() + 5
    while again.state != reading._GIVEN and time.monotonic() < deadline:
        time.sleep(0.01)
    assert again.state == reading._GIVEN
    first_went, second_went = threading.Event(), threading.Event()
    watch.add(lent_role(first_went.set))
    time.sleep(reading.LENT_SECONDS / 2)  # the next one comes while the watch waits for its next look
    watch.add(lent_role(second_went.set))  # not late at that look: the watch must look again
    assert first_went.wait(1) and second_went.wait(1), "a role lent too long was not given away within 1 s"
    time.sleep(idle * 4)  # nothing lent for longer than idle: the watch stops looking until the next one
    woken = threading.Event()
    watch.add(lent_role(woken.set))
    assert woken.wait(1), "a watch that had stopped looking did not wake for a role lent"
    assert refusing.tries == 1  # handed over once, after many looks: a role given away is forgotten
    reported = [r.exc_info[1].args[0] for r in caplog.records if r.exc_info]
    assert reported == ["can't start new thread"] and not unraisable  # said once, the same way by both


@pytest.mark.parametrize("kind", ["python", "native"])
def test_roles_found_late_at_one_look_are_all_forgotten_before_the_first_is_given_away(kind):
    """The watch takes every late role out of its count as it finds them, before handing any over: a
    role's give-away may take the GIL and a while, and the count must not show the others lent then."""
    from distautograd.transport import reading

    make = dict(_watches()).get(kind)
    if make is None:
        pytest.skip("the compiled core is not built")
    seen, done = [], threading.Event()

    def late(role):
        seen.append(watch.lent())
        if len(seen) == 2:
            done.set()

    watch = make(0.2, 1.0, late)  # a limit far above the gap between the two adds: one look finds both late
    roles = [reading.Role(lambda: None) for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)  # and no other thread takes the GIL between them
    try:
        for role in roles:
            role.state = reading._LENT
            watch.add(role)
    finally:
        sys.setswitchinterval(interval)
    assert done.wait(5), f"two roles lent too long were not handed over within 5 s: {seen}"
    assert seen == [0, 0], seen


def test_a_forked_child_gets_a_watch_and_standby_threads_of_its_own():
    """A child forked from a process whose watchdog runs (a DataLoader worker, say) has neither its thread
    nor, perhaps, its lock free: it starts afresh, and a call it lends too long still gets given away."""
    from distautograd.transport import reading

    warm = reading.Role(lambda: None)
    warm.state = reading._LENT
    reading._watch.add(warm)  # the parent's watchdog thread runs
    reading._watch.forget(warm)
    parents = reading._watch, reading.standby
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        try:
            went = threading.Event()
            role = reading.Role(went.set)
            role.state = reading._LENT
            reading._watch.add(role)
            fresh = reading._watch is not parents[0] and reading.standby is not parents[1]
            os.write(write_end, b"1" if fresh and went.wait(2) else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        said = os.read(read_end, 1)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert said == b"1", "the forked child's late role was not given away by a watch of its own"
