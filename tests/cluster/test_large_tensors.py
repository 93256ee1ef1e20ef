"""Tensors larger than any single gRPC message stream in chunks and arrive bit-exact."""

import time

import pytest
import torch

from distautograd import rpc
from distautograd.transport.link import MAX_MESSAGE_BYTES
from tests.helpers import remote

pytestmark = [pytest.mark.usefixtures("trainer"), pytest.mark.slow]


def test_one_gibibyte_each_way():
    size = 1 << 30
    assert size > MAX_MESSAGE_BYTES
    t = torch.arange(size, dtype=torch.int64).remainder_(251).to(torch.uint8)
    start = time.monotonic()
    back = rpc.rpc_sync("worker1", remote.echo, args=(t,), timeout=300)
    elapsed = time.monotonic() - start
    assert back.shape == t.shape and torch.equal(back, t)
    print(f"1 GiB round trip through worker1: {elapsed:.1f} s")


def test_many_medium_tensors_in_one_call():
    ts = [torch.randn(3 << 20) for _ in range(8)]  # 8 x 12 MiB, streamed together
    back = rpc.rpc_sync("worker2", remote.echo, args=(ts,), timeout=120)
    assert all(torch.equal(a, b) for a, b in zip(ts, back))
