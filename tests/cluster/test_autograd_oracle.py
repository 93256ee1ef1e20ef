"""Distributed backward equals single-process torch.autograd, running every autograd node exactly once.

Each shape in tests/shapes.py runs across the trainer (this process) and three worker processes,
through rpc_sync, rpc_async and remote; then again in this process with plain torch.autograd.
Gradients must be bit-identical, and the backward of the counting Function must run as often
in total as it does in one process.
"""

import pytest
import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc
from tests.helpers import shapes

pytestmark = pytest.mark.usefixtures("trainer")
WORKERS = ("trainer", "worker1", "worker2", "worker3")


def distributed_run(shape, mode):
    for w in WORKERS:
        rpc.rpc_sync(w, shapes.reset_counts)
    with dist_autograd.context() as context_id:
        roots = shape(mode)
        dist_autograd.backward(context_id, roots)
        grads = {}
        for w in WORKERS:
            grads.update(rpc.rpc_sync(w, shapes.grads_by_key, args=(context_id,)))
    count = sum(rpc.rpc_sync(w, shapes.backward_count) for w in WORKERS)
    return grads, count


def single_process_run(shape, mode):
    shapes.reset_counts()
    with shapes.oracle():
        roots = shape(mode)
    leaves = shapes.oracle_leaves()
    names = [n for n, t in leaves.items() if t.requires_grad]
    grads = torch.autograd.grad(roots, [leaves[n] for n in names], allow_unused=True)
    return {n: g for n, g in zip(names, grads) if g is not None}, shapes.backward_count()


@pytest.mark.parametrize("mode", shapes.MODES)
@pytest.mark.parametrize("shape", shapes.SHAPES, ids=lambda s: s.__name__)
def test_matches_single_process_autograd(shape, mode):
    got, got_count = distributed_run(shape, mode)
    want, want_count = single_process_run(shape, mode)
    assert set(got) == set(want), f"leaves with gradients differ: {sorted(set(got) ^ set(want))}"
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), (
            f"{name}: max |diff| {(got[name] - want[name]).abs().max().item():.3g}"
        )
    assert got_count == want_count, f"counting Function ran {got_count} times distributed, {want_count} in one process"


def test_every_shape_exercises_the_count_where_non_leaves_are_reused():
    reused = {"fan_out_fan_in", "non_leaf_sent_twice", "round_trip_meets_itself",
              "nested_round_trip_through_the_caller", "diamond_through_a_boundary",
              "multi_output_pieces_to_two_workers"}
    for shape in shapes.SHAPES:
        if shape.__name__ in reused:
            _, count = single_process_run(shape, "sync")
            assert count > 0, shape.__name__
