"""The core's push lane (native/csrc/push_lane.cpp) over real socket pairs: a push the core reads goes,
inside the reader's call, into its part where that part is registered (no Python between but the
callbacks it is given), to the pass protocol's ``take`` otherwise, and back to the Python path where the
core does not decode it, torch's profiler records, or ``take`` declines; what a part or ``take`` raises
is said, reading is lent around the part's run and reclaimed, and a hop is stamped as the Python path
stamps it."""

from __future__ import annotations

import gc
import sys
import types
import weakref

import pytest
import torch
from torch.autograd.graph import get_gradient_edge

from distautograd import native
from distautograd.engine import order
from distautograd.engine.graph import ROOTS
from distautograd.engine.local_pass import UnknownSource, start
from distautograd.engine.slots import GradStore
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import frames
from distautograd.transport.pushes import ArrivedPush, Taken
from tests.helpers.paths import take_path
from tests.helpers.pushes import codec
from tests.helpers.socket_pairs import pair

pytestmark = pytest.mark.skipif(native.core is None, reason="the compiled core is not built")

SENT = 7  # the send point's message id
CONTEXT, PASS, ROOT, SRC = 9, 4, 1, 3


@pytest.fixture(autouse=True)
def native_path(monkeypatch):
    take_path(monkeypatch, "1")


class Part:
    """A core LocalPass: ``x`` a leaf, the roots reaching it through ``(x * 2).sum()``, a send point
    through ``x * 3``."""

    def __init__(self):
        self.x = torch.tensor([1.0, 2.0], requires_grad=True)
        sent, root = self.x * 3, (self.x * 2).sum()
        edges = {ROOTS: [get_gradient_edge(root)], SENT: [get_gradient_edge(sent)]}
        keys = {SENT: order.place([edges[SENT][0].node])}
        order.place([edges[ROOTS][0].node])
        self.store = GradStore()
        self.finished = []
        self.local = start(edges, keys, self.store, send=lambda grads, last: None, finish=self.finished.append)
        assert isinstance(self.local, native.core.LocalPass)

    def grad(self):
        return self.store.snapshot().get(self.x)


class Lane:
    """A PushLane whose callbacks say what they were called with, in ``calls``."""

    def __init__(self, takes=True, unsent_limit=1 << 20):
        self.calls, self.takes, self.role = [], takes, object()
        self.stamps = types.SimpleNamespace(ON=False, arrived=lambda: self.calls.append("arrived"),
                                            received=lambda key: self.calls.append(("received", key)))
        self.lane = native.core.PushLane(self.take, self.lend, self.reclaim, self.stamps, unsent_limit)

    def take(self, *args):
        self.calls.append(("take", args))
        return self.takes

    def lend(self):
        self.calls.append("lend")
        return self.role

    def reclaim(self, role):
        self.calls.append(("reclaim", role))

    def add(self, part: Part, learn=None, failed=None):
        self.lane.add(CONTEXT, PASS, part.local, learn or (lambda done: self.calls.append(("learn", done))),
                      failed or (lambda error: self.calls.append(("failed", error))))


def read(lane, grads, message_ids=(SENT,), done=(), plan=None, family="unix", native_reader=True):
    """The push (context CONTEXT, pass PASS, root ROOT) written to a socket pair and read from peer SRC."""
    serialized, attachments = codec().encode_push(CONTEXT, PASS, plan, list(message_ids), grads, ROOT, list(done))
    request = pb.Request.FromString(serialized)
    request.attachments.streamed_sizes.extend(memoryview(a).nbytes for a in attachments)
    a, b = pair(family)
    try:
        frames.write_frame(a, 0, "request", request, attachments, [], None)
        reader = frames.NativeReader(b) if native_reader else frames.PythonReader(b)
        return reader.read_frame(1 << 20, lane.lane if isinstance(lane, Lane) else lane, SRC)
    finally:
        a.close(), b.close()


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_a_push_to_a_registered_part_arrives_there_inside_the_read(family):
    part, lane = Part(), Lane()
    lane.add(part)
    read_back = read(lane, [torch.ones(2)], done=[(5, 2)], family=family)
    assert type(read_back) is Taken and read_back.nbytes > 8 and read_back.attachments == 1  # the gradient's 8 bytes
    assert part.local.arrived == 1 and part.grad() is None  # x still waits for the roots
    assert lane.calls == ["lend", ("learn", [(5, 2)]), ("reclaim", lane.role)]
    part.local.arrive(ROOTS, [torch.tensor(1.0)])
    assert torch.equal(part.grad(), torch.tensor([5.0, 5.0])) and part.finished == [None]


def test_a_push_for_a_part_not_registered_goes_to_take_decoded():
    lane, plan = Lane(), pb.PassPlan(root=ROOT, active_sends=[SENT, 8])
    grads = [torch.randn(2, 3), None]
    assert type(read(lane, grads, message_ids=(SENT, 8), done=[(5, 2)], plan=plan.SerializeToString())) is Taken
    ((kind, args),) = lane.calls
    assert kind == "take" and args[:7] == (SRC, CONTEXT, PASS, ROOT, [SENT, 8], [(5, 2)], plan.SerializeToString())
    assert torch.equal(args[7][0], grads[0]) and args[7][1] is None
    assert type(read(lane, [torch.ones(1)])) is Taken and lane.calls[-1][1][6] is None  # no plan: None


@pytest.mark.parametrize("other", [(CONTEXT, PASS + 1), (CONTEXT + 1, PASS)])
def test_a_part_registered_for_another_pass_gets_none_of_this_ones_pushes(other):
    part, lane = Part(), Lane()
    lane.lane.add(*other, part.local, print, print)
    assert type(read(lane, [torch.ones(2)])) is Taken
    assert [call[0] for call in lane.calls] == ["take"] and part.local.arrived == 0


def test_a_push_take_declines_comes_back_as_the_python_paths():
    lane = Lane(takes=False)
    read_back = read(lane, [torch.ones(2)])
    assert isinstance(read_back, ArrivedPush) and read_back.message_ids == [SENT]
    assert [call[0] for call in lane.calls] == ["take"]


def test_a_dropped_part_gets_no_more_pushes():
    part, lane = Part(), Lane()
    lane.add(part)
    assert len(lane.lane) == 1
    lane.lane.drop(CONTEXT, PASS)
    lane.lane.drop(CONTEXT, PASS)  # twice: nothing
    assert len(lane.lane) == 0
    assert type(read(lane, [torch.ones(2)])) is Taken
    assert [call[0] for call in lane.calls] == ["take"] and part.local.arrived == 0


def test_under_torchs_profiler_a_push_goes_the_python_way():
    part, lane = Part(), Lane()
    lane.add(part)
    with torch.autograd.profiler.profile():
        read_back = read(lane, [torch.ones(2)])
    assert isinstance(read_back, ArrivedPush) and lane.calls == [] and part.local.arrived == 0


def test_gradients_the_core_does_not_decode_go_the_python_way_which_says_what_is_wrong():
    part, lane = Part(), Lane(unsent_limit=1024)
    lane.add(part)
    read_back = read(lane, [torch.zeros(1 << 12)])  # all zeros: travels as its shape, 16 KiB to make
    assert isinstance(read_back, ArrivedPush) and lane.calls == [] and part.local.arrived == 0


def test_a_push_the_part_refuses_is_told_to_failed_and_reading_is_reclaimed():
    part, lane = Part(), Lane()
    lane.add(part)
    assert type(read(lane, [torch.ones(2)], message_ids=(999,))) is Taken
    assert lane.calls[0] == "lend" and lane.calls[-1] == ("reclaim", lane.role)
    ((kind, error),) = lane.calls[1:-1]
    assert kind == "failed" and isinstance(error, UnknownSource) and "send point 999" in str(error)


def test_what_failed_or_take_raise_is_said_as_unraisable_and_reading_goes_on(monkeypatch):
    said = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: said.append((report.object, report.exc_value)))
    part, lane = Part(), Lane()

    def failing(error):
        raise RuntimeError("the report failed")

    lane.add(part, failed=failing)
    assert type(read(lane, [torch.ones(2)], message_ids=(999,))) is Taken
    assert lane.calls == ["lend", ("reclaim", lane.role)]
    lane.lane.drop(CONTEXT, PASS)
    lane.take = lambda *args: 1 / 0
    lane.lane = native.core.PushLane(lane.take, lane.lend, lane.reclaim, lane.stamps, 1 << 20)
    assert type(read(lane, [torch.ones(2)])) is Taken
    assert [(message.split(" ")[-1], type(error)) for message, error in said] == [
        ("error", RuntimeError), ("protocol", ZeroDivisionError)], said


def test_on_a_thread_that_reads_for_nobody_nothing_is_reclaimed():
    part, lane = Part(), Lane()
    lane.lend = lambda: lane.calls.append("lend")  # None: no role lent
    lane.lane = native.core.PushLane(lane.take, lane.lend, lane.reclaim, lane.stamps, 1 << 20)
    lane.add(part)
    assert type(read(lane, [torch.ones(2)])) is Taken and lane.calls == ["lend"] and part.local.arrived == 1


@pytest.mark.parametrize("registered", [True, False])
def test_a_hop_is_stamped_arrived_then_received_while_the_bench_records(registered):
    part, lane = Part(), Lane()
    if registered:
        lane.add(part)
    lane.stamps.ON = True
    read(lane, [torch.ones(2)])
    assert lane.calls[:2] == ["arrived", ("received", (CONTEXT, PASS, SENT))]


def test_only_the_cores_local_pass_is_registered():
    with pytest.raises(TypeError, match="^a PushLane runs pushes into the core's LocalPass, not <class 'object'>$"):
        Lane().lane.add(CONTEXT, PASS, object(), print, print)


def test_the_python_reader_leaves_the_lane_alone():
    part, lane = Part(), Lane()
    lane.add(part)
    frame, streamed, following = read(lane, [torch.ones(2)], native_reader=False)
    assert frame.request.push_gradients.message_ids == [SENT] and lane.calls == [] and part.local.arrived == 0


class Owner:
    """Whoever holds a lane (the pass protocol)."""


def owned_lane(through: str) -> weakref.ref:
    """An Owner holding a lane with a registered part, one of whose callbacks (``through``) closes over
    the Owner; nothing else refers to it once this returns (the closures' cell is this call's)."""
    owner = Owner()
    back = {name: (lambda *args: owner) if name == through else (lambda *args: None)
            for name in ("its own", "learn", "failed")}
    owner.lane = native.core.PushLane(back["its own"], lambda: None, lambda role: None, None, 1)
    owner.part = Part()
    owner.lane.add(CONTEXT, PASS, owner.part.local, back["learn"], back["failed"])
    return weakref.ref(owner)


@pytest.mark.parametrize("through", ["its own", "learn", "failed"])
def test_a_lane_whose_callbacks_reach_back_to_it_is_collected(through):
    """The cycle goes through one of the lane's callbacks: its own (``take``) or a part's."""
    gone = owned_lane(through)
    assert gone() is not None  # held by the cycle alone, until the collector finds it
    gc.collect()
    assert gone() is None
