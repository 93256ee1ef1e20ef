"""Several hosts on one machine: Linux network namespaces on a bridge, each with its own address and /etc/hosts.

For tests and benchmarks that must cross a real network path (or run what docker-compose
describes) without a container engine. Needs root and iproute2; ``available()`` says whether
this machine can, and why not.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from typing import Dict, List, Optional, Sequence


def available() -> Optional[str]:
    """None when namespaces can be made here; otherwise the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    probe = f"dagprobe{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Network:
    """Hosts ``names`` on a private bridge, each in its own namespace; every host resolves every name.

    Use as a context manager: everything it made is removed on exit, even after a failure.
    """

    def __init__(self, names: Sequence[str], subnet: Optional[str] = None):
        tag = os.getpid() % 100000
        self.names = list(names)
        self.subnet = ipaddress.ip_network(subnet or f"10.{200 + tag % 50}.{tag % 250}.0/24")
        self.bridge = f"dagbr{tag}"
        self.namespaces = {name: f"dag{tag}-{i}" for i, name in enumerate(self.names)}
        hosts = list(self.subnet.hosts())
        self.addresses = {name: str(hosts[10 + i]) for i, name in enumerate(self.names)}
        self._veths: List[str] = []

    def __enter__(self) -> "Network":
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "up")
            self._allow_bridged_traffic(True)
            hosts_file = "127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in self.addresses.items())
            for i, name in enumerate(self.names):
                ns, veth = self.namespaces[name], f"{self.bridge}v{i}"[-15:]
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._veths.append(veth)
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{self.addresses[name]}/{self.subnet.prefixlen}", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
                with open(f"/etc/netns/{ns}/hosts", "w") as f:
                    f.write(hosts_file)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def command(self, name: str, argv: Sequence[str]) -> List[str]:
        """``argv`` to run inside host ``name``."""
        return ["ip", "netns", "exec", self.namespaces[name], *argv]

    # ------------------------------------------------------------------ faults

    def set_link(self, name: str, up: bool) -> None:
        """Unplugs (or plugs back) host ``name``'s cable: its port on the bridge goes down, so its
        packets are lost both ways and nothing tells either side (a partition)."""
        _ip("link", "set", self._veths[self.names.index(name)], "up" if up else "down")

    def lose_incoming(self, name: str, probability: float, lose: bool) -> None:
        """Each packet arriving at host ``name`` is dropped with ``probability`` (iptables' statistic
        match: random loss without netem), or no longer."""
        rule = ["INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random", "--probability", f"{probability:g}",
                "-j", "DROP"]
        subprocess.run(self.command(name, ["iptables", "-A" if lose else "-D", *rule]), check=True,
                       capture_output=True)

    def drop_outgoing(self, name: str, drop: bool) -> None:
        """Host ``name``'s own packets out are dropped inside its namespace (one-way loss); what
        others send it still arrives."""
        rule = ["OUTPUT", "-o", "eth0", "-j", "DROP"]
        subprocess.run(self.command(name, ["iptables", "-A" if drop else "-D", *rule]), check=True,
                       capture_output=True)

    def __exit__(self, *exc) -> None:
        for ns in self.namespaces.values():
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        for veth in self._veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self._allow_bridged_traffic(False)

    def forward_rule(self) -> List[str]:
        return ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]

    def _allow_bridged_traffic(self, allow: bool) -> None:
        """Where Docker runs, the FORWARD policy is DROP and bridged frames pass through iptables: this
        network's own traffic must be let through (only between its own hosts), and the rule taken away after."""
        if shutil.which("iptables") is None:
            return
        present = subprocess.run(["iptables", "-C", *self.forward_rule()], capture_output=True).returncode == 0
        if allow and not present:
            subprocess.run(["iptables", "-I", *self.forward_rule()], capture_output=True)
        elif not allow and present:
            subprocess.run(["iptables", "-D", *self.forward_rule()], capture_output=True)


def environment(base: Dict[str, str], extra: Dict[str, str]) -> Dict[str, str]:
    """The environment of a process inside the network: ``extra`` on top of what it needs to run."""
    keep = {k: v for k, v in base.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
    keep.update(extra)
    return keep
