"""The TCP -> gRPC fallback, where a firewall makes it happen: beta drops new TCP connections to
every port but its gRPC one, so alpha's plain TCP connection to beta times out and the call goes
over the gRPC stream instead, with torch's gradient."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distautograd import netns
from distautograd.testing import run_together
from tests.helpers.programs import NEEDS_IPTABLES

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "tests" / "programs" / "fallback" / "main.py"
REASON = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=f"{REASON}")]
GRPC_PORT = "29600"


@NEEDS_IPTABLES
def test_a_firewalled_socket_port_falls_back_to_grpc():
    with netns.Network(["alpha", "beta"]) as network:
        firewall = ["iptables", "-A", "INPUT", "-p", "tcp", "--syn", "!", "--dport", GRPC_PORT, "-j", "DROP"]
        subprocess.run(network.command("beta", firewall), check=True, capture_output=True)
        env = netns.environment(os.environ, {
            "MASTER_ADDR": "alpha", "MASTER_PORT": "29500", "DISTAUTOGRAD_TRANSPORT": "tcp",
            "DISTAUTOGRAD_TOKEN": "fallback-test-token", "DISTAUTOGRAD_PORT": GRPC_PORT,
            "DISTAUTOGRAD_HEARTBEAT_TIMEOUT": "2",  # how long the TCP connect waits before giving up
        })
        alpha, beta = run_together(
            [network.command(role, [sys.executable, str(PROGRAM), role]) for role in ("alpha", "beta")],
            timeout=120, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert alpha.returncode == 0 and beta.returncode == 0, (alpha.stdout, beta.stdout)
        report = json.loads([line for line in alpha.stdout.splitlines() if line.startswith("{")][-1])
        assert report == {"wire": "grpc", "exact": True, "sum": [2.0, 2.0]}, alpha.stdout
