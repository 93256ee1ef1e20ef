"""Backward pushes for the tests of the core's push writer and reader: random ones, and as Python builds them."""

from __future__ import annotations

import random

import torch

from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.codec import Codec

BIG = (1 << 64) - 1  # ids are uint64; message ids of high ranks pass 2**63


def codec() -> Codec:
    return Codec(allowlist=None, rrefs=None, contexts=None)


def protobuf_push(context_id, pass_id, plan, message_ids, grads, root, done) -> pb.Request:
    """The push as backward.py builds it where the core does not: the codec's value in protobuf messages."""
    value, _ = codec().encode(grads, 0, None, compact_zeros=True)
    body = pb.PushGradients(context_id=context_id, pass_id=pass_id, message_ids=message_ids, gradients=value, root=root,
                            done=[pb.PartDone(rank=r, leaves=n) for r, n in done])
    if plan is not None:
        body.plan.CopyFrom(plan)
    return pb.Request(push_gradients=body)


def gradient(rng: random.Random):
    kind = rng.randrange(6)
    if kind == 0:
        return None
    if kind == 1:
        return torch.zeros(rng.randrange(1, 5), 3)  # travels as its shape
    if kind == 2:
        return torch.randn(6, 4).t()  # a view that keeps its strides
    if kind == 3:
        return torch.randn(3).expand(4, 3)  # an expanded view: its one row travels
    return torch.randn([rng.randrange(0, 4) for _ in range(rng.randrange(0, 3))]).to(
        rng.choice([torch.float32, torch.float64, torch.int64, torch.bool, torch.complex64]))


def random_push(rng: random.Random) -> tuple:
    """(context id, pass id, plan or None, message ids, gradients, root, [(rank, leaves)]) of a push, ids
    and ranks up to their types' limits."""
    count = rng.randrange(1, 6)
    ids = [rng.choice([0, 1, 1 << 48 | rng.randrange(1 << 20), BIG - rng.randrange(10)]) for _ in range(count)]
    grads = [gradient(rng) for _ in range(count)]
    plan = rng.choice([None, pb.PassPlan(root=rng.randrange(3), active_sends=ids, retain_graph=rng.random() < .5,
                                         anomaly=rng.randrange(3), inspect=rng.randrange(2))])
    done = [(rng.randrange(0, 1 << 32), rng.randrange(0, 1 << 32)) for _ in range(rng.randrange(3))]
    return (rng.choice([0, 7, BIG]), rng.choice([0, 3, BIG]), plan, ids, grads, rng.choice([0, 1, (1 << 32) - 1]),
            done)
