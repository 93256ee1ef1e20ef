"""A backward hop stamped stage by stage (transport.hops, for the bench's breakdown): every hop that
read a push is kept with its stages in order, each push sent is paired with the hop that read it,
and nothing is stamped once the recording stops."""

from __future__ import annotations

import math

import pytest
import torch

from distautograd.bench import breakdown
from distautograd.transport import hops
from tests.helpers.inprocess import World, backward, call, context
from tests.inprocess.test_backward import NAMES, chain, local_chain, the_grads


@pytest.fixture
def world():
    world = World(NAMES, rpc_timeout=5)
    yield world
    hops.stop()
    world.close()


def _chain_pass():
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    with context("w0") as ctx:
        y = call("w0", "w1", chain, x, ["w1", "w2"])
        backward("w0", ctx, [y.sum()])
        got = the_grads("w0", ctx.id)[x]
    x2 = x.detach().clone().requires_grad_()
    local, _ = local_chain(x2, ["w1", "w2"])
    local.sum().backward()
    assert torch.equal(got, x2.grad)  # recording changes nothing
    return ctx.id


def test_each_hop_a_worker_read_is_stamped_in_order_and_paired_with_the_next(world):
    hops.start()
    context_id = _chain_pass()
    recorded = hops.stop()
    # w0 -> w1 -> w2 forward; backward: w1 passes w2's output through to w2, w2 runs its stage and
    # pushes to w1, w1 runs its own and pushes to w0 (the root's arrivals are its caller's: no hop)
    read = [h for h in recorded if "arrived" in h]
    assert len(read) == 3, recorded
    for hop in read:
        stamps = [hop[s] for s in ("arrived", "decoded", "started", "engine", "encoded", "sent") if s in hop]
        assert stamps == sorted(stamps), hop
        assert hop["in"][0] == hop["out"][0] == context_id
    # the first push to w1 and the one to w2 start their parts; w2's answer arrives at w1's part, started
    assert sorted("started" in h for h in read) == [False, True, True], read
    ins = {h["in"] for h in read}
    assert sum(h["out"] in ins for h in read) == 2  # w1 -> w2 and w2 -> w1 were read as hops; -> w0 was not
    summary = breakdown.summarize(recorded)
    assert summary["hops"] == 3 and summary["hops that start the part"] == 2
    # whole hops are read to next read: w1 -> w2 starts w2's part; w2 -> w1 goes to a started part, but what
    # w1 sends on goes to the root, whose arrivals are no hop
    assert math.isfinite(summary[breakdown.STARTING]) and math.isnan(summary[breakdown.INTO_STARTED]), summary
    shown = [s for s, _, _ in breakdown.STAGES] + [breakdown.HANDED_OVER, breakdown.SENDING]
    assert all(math.isfinite(summary[name]) and summary[name] >= 0 for name in shown), summary
    assert summary["per hop"] == pytest.approx(
        sum(summary[s] for s, _, _ in breakdown.STAGES) + summary[breakdown.HANDED_OVER])


def test_nothing_is_stamped_before_the_recording_starts_or_after_it_stops(world):
    _chain_pass()
    assert hops.stop() == []
    hops.start()
    hops.stop()
    _chain_pass()
    assert hops.stop() == []
    with pytest.raises(ValueError, match="no hop was recorded"):
        breakdown.summarize([])
