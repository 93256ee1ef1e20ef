"""The benchmark command runs both frameworks and prints its table (numbers are its business, not the tests')."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_quick_benchmark_prints_a_row_per_measurement():
    result = subprocess.run(
        [sys.executable, "-m", "distautograd.bench", "--quick", "--only", "latency", "transfer", "chain", "hops"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for row in ("rpc_sync latency", "CPU per call, caller", "CPU per call, callee", "1 MiB one way, same host",
                "16 MiB one way, same host", "backward through a chain of 2 workers", "CPU per worker per step, chain of 2"):
        assert row in out, out
    assert "ratio = distautograd / torch.distributed.rpc" in out
    assert re.search(r"\|\s+by round \|", out) and "| rounds met |" in out, out  # bench/rounds.py
    assert "a small call's CPU on distautograd's reading threads, stage by stage" in out
    for stage in ("the call's frame read", "the call decoded", "the function run", "its result placed and encoded",
                  "the reply written", "on the caller: the reply decoded"):
        assert f"| {stage}" in out, out
    from distautograd import native

    assert f"distautograd: {native.built()}" in result.stderr  # says which path it runs
    for stage in ("arrival to decoded", "engine", "encoded", "encoded to read by the next worker", "per hop",
                  "the send call, on the sender (overlaps the above)"):
        assert f"| {stage} | " in out, out  # one backward hop, stage by stage
    assert "a whole hop, read to next read: mean" in out
    assert ("| stage | native | python |" if native.path_on() else "| stage | python |") in out  # each path's hop
    assert "us per hop (half the cost of a worker added" not in out  # one chain length: no slope to take
