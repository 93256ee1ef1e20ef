"""What iperf3 reaches with one TCP stream between two network namespaces: the bar for the bench's namespace transfer."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Optional


def between_namespaces(seconds: float = 3.0) -> Optional[float]:
    """GB/s iperf3 received from one namespace to another of a fresh two-host network; None (and why,
    on stderr) when iperf3 is not installed."""
    from distautograd import netns

    if shutil.which("iperf3") is None:
        return None
    with netns.Network(["trainer", "worker1"]) as network:
        server = subprocess.Popen(network.command("worker1", ["iperf3", "-s", "-1"]), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(50):  # the server listens within a moment
                client = subprocess.run(
                    network.command("trainer", ["iperf3", "-c", network.addresses["worker1"], "-t", str(seconds), "-J"]),
                    capture_output=True, text=True, timeout=seconds + 30)
                if client.returncode == 0:
                    return json.loads(client.stdout)["end"]["sum_received"]["bits_per_second"] / 8e9
                subprocess.run(["sleep", "0.1"])
            raise RuntimeError(f"iperf3 between namespaces failed: {client.stdout[-500:]} {client.stderr[-500:]}")
        finally:
            server.kill()
            server.wait(10)
