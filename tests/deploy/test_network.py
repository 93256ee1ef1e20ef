"""The namespaces tests use as hosts must work on a developer's machine where Docker runs (FORWARD DROP)."""

import shutil
import subprocess
import sys

import pytest

from distautograd import netns
from distautograd.testing import run_together

REASON = netns.available() or (None if shutil.which("iptables") else "needs iptables")
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=f"{REASON}")]
BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"

SERVER = "import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 7000)); s.listen(); c,_=s.accept(); c.sendall(b'ok')"
CLIENT = ("import socket,sys,time\nfor _ in range(50):\n    try:\n        s=socket.create_connection((sys.argv[1],7000),1); "
          "print(s.recv(2).decode()); break\n    except OSError: time.sleep(0.1)")


def forward_policy() -> str:
    return subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout.splitlines()[0]


@pytest.fixture
def forward_dropped_as_docker_leaves_it():
    policy = forward_policy().split()[-1]
    bridge_nf = open(BRIDGE_NF).read().strip() if shutil.os.path.exists(BRIDGE_NF) else None
    subprocess.run(["iptables", "-P", "FORWARD", "DROP"], check=True)
    if bridge_nf is not None:
        open(BRIDGE_NF, "w").write("1")
    try:
        yield
    finally:
        subprocess.run(["iptables", "-P", "FORWARD", policy], check=True)
        if bridge_nf is not None:
            open(BRIDGE_NF, "w").write(bridge_nf)


@pytest.mark.usefixtures("forward_dropped_as_docker_leaves_it")
def test_hosts_on_the_bridge_reach_each_other_and_the_rule_goes_with_the_network():
    with netns.Network(["alpha", "beta"]) as network:
        rule = network.forward_rule()
        assert subprocess.run(["iptables", "-C", *rule], capture_output=True).returncode == 0
        server, client = run_together(
            [network.command("alpha", [sys.executable, "-c", SERVER, network.addresses["alpha"]]),
             network.command("beta", [sys.executable, "-c", CLIENT, network.addresses["alpha"]])],
            timeout=30, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert client.stdout.strip() == "ok", (client.stdout, client.stderr, server.stderr)
    assert subprocess.run(["iptables", "-C", *rule], capture_output=True).returncode != 0
