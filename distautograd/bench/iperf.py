"""What iperf3 reaches with one TCP stream between two network namespaces: the bar for the bench's namespace transfer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import Optional


def between_namespaces(seconds: float = 3.0) -> Optional[float]:
    """GB/s iperf3 received from one namespace to another of a fresh two-host network; None when iperf3
    is not installed, or (saying why on stderr) when three of its runs gave no figure."""
    from distautograd import netns

    if shutil.which("iperf3") is None:
        return None
    why, runs = "", 0
    with netns.Network(["trainer", "worker1"]) as network:
        # not one-off (-1): a run that ends without its figures does not take the server with it
        server = subprocess.Popen(network.command("worker1", ["iperf3", "-s"]), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(50):  # the server listens within a moment: until then the client fails at once
                try:
                    client = subprocess.run(
                        network.command("trainer", ["iperf3", "-c", network.addresses["worker1"], "-t", str(seconds),
                                                    "-J"]),
                        capture_output=True, text=True, timeout=seconds + 30)
                except subprocess.TimeoutExpired:
                    why, runs = f"a run took more than {seconds + 30:g} s", runs + 1
                else:
                    received = _received(client.stdout) if client.returncode == 0 else None
                    if received is not None:
                        return received / 8e9
                    why = f"{client.stdout[-300:]} {client.stderr[-300:]}".strip()
                    runs += client.returncode == 0  # it ran, and said nothing of what it received
                if runs == 3:
                    break
                time.sleep(0.1)
        finally:
            server.kill()
            server.wait(10)
    print(f"iperf3 between namespaces gave no figure: {why}", file=sys.stderr)
    return None


def _received(report: str) -> Optional[float]:
    """The bits per second an iperf3 -J report says were received, or None where it says none."""
    try:
        return float(json.loads(report)["end"]["sum_received"]["bits_per_second"])
    except (ValueError, KeyError, TypeError):
        return None
