"""A pass that cannot finish fails, naming who: by the timeout when a worker's backward is slow, at
once when a participant leaves. Each test has a world of its own (one world alive at a time)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from distautograd import errors
from tests.helpers.inprocess import AGENTS, World, backward, call, context


class SlowInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(1.5)
        return grad


def slow_in_backward(x):
    return SlowInBackward.apply(x)


def test_a_slow_backward_fails_by_the_timeout_naming_who_is_late():
    names = ["s0", "s1"]
    world = World(names, rpc_timeout=0.5)
    try:
        x = torch.randn(3, requires_grad=True)
        with context("s0") as ctx:
            y = call("s0", "s1", slow_in_backward, x)
            began = time.monotonic()
            with pytest.raises(errors.DeadlineExceeded, match=r"did not finish within 0.5 s; still waiting for "
                                                              r"'s0' \(rank 0\), 's1' \(rank 1\)$"):
                backward("s0", ctx, [y.sum()])
            assert 0.4 < time.monotonic() - began < 1.4
    finally:
        world.close()


def test_a_participant_that_leaves_mid_pass_fails_it_naming_the_worker():
    names = ["d0", "d1", "d2"]
    world = World(names, rpc_timeout=30)
    try:
        x = torch.randn(3, requires_grad=True)
        with context("d0") as ctx:
            y = call("d0", "d2", slow_in_backward, x)
            threading.Timer(0.3, lambda: AGENTS["d2"].stop(graceful=False)).start()
            began = time.monotonic()
            # Whichever comes first: the connection closed by d2's kernel, or the coordinator's notice.
            with pytest.raises(errors.Unavailable, match=r"lost 'd2' \(rank 2\)|worker 'd2' \(rank 2\) (died|left) "
                                                         r"during the backward"):
                backward("d0", ctx, [y.sum()])
            assert time.monotonic() - began < 1.4
    finally:
        world.close()
