"""The coordinator's GetEndpoints beyond loopback: from another host only with the token; on its own
host without it (where a process of the same user then fetches the generated token)."""

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distautograd import netns

ROOT = Path(__file__).resolve().parents[2]
ASK = ROOT / "tests" / "programs" / "endpoints" / "ask.py"
REASON = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=f"{REASON}")]
TOKEN = "endpoints-test-token"
PORT = "29650"


def _ready(process, timeout):
    """Waits (bounded) for the coordinator's "ready" line; False if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([process.stdout], [], [], 0.5)[0]:
            line = process.stdout.readline()
            if not line:
                return False
            if "ready" in line:
                return True
    return False


def _ask(network, host, address):
    env = netns.environment(os.environ, {"PYTHONPATH": str(ROOT)})
    out = subprocess.run(network.command(host, [sys.executable, str(ASK), address, TOKEN]), env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_endpoints_beyond_loopback_need_the_token():
    with netns.Network(["coord", "elsewhere"]) as network:
        env = netns.environment(os.environ, {"PYTHONPATH": str(ROOT)})
        coordinator = subprocess.Popen(
            network.command("coord", [sys.executable, "-m", "distautograd.cli", "coordinator", "--host", "0.0.0.0",
                                      "--port", PORT, "--token", TOKEN]),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert _ready(coordinator, timeout=30)
            remote = _ask(network, "elsewhere", f"{network.addresses['coord']}:{PORT}")
            assert remote["without"]["ok"] is False and remote["without"]["code"] == "UNAUTHENTICATED"
            assert "only callers on the coordinator's host" in remote["without"]["details"]
            assert remote["wrong"]["code"] == "UNAUTHENTICATED"
            assert remote["with"]["ok"] is True
            local = _ask(network, "coord", f"127.0.0.1:{PORT}")
            assert local["without"]["ok"] is True and local["with"]["ok"] is True
        finally:
            coordinator.terminate()
            try:
                coordinator.wait(timeout=10)
            except subprocess.TimeoutExpired:
                coordinator.kill()
                coordinator.wait(timeout=10)
