"""Run inside a network namespace of its own: ends a TCP connection under a SocketTransport (cut by
iptables, or reset by its peer) so that its reading thread is told why while a sender, holding the
GIL, is told only EPIPE; prints how the link was closed, one line per round."""

import socket
import struct
import subprocess
import sys
import time

from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import ending, framing
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.link import Link
from distautograd.transport.sockets import SocketTransport
from tests.helpers.socket_pairs import tcp_pair

NOTE = pb.Request(release_shared=pb.ReleaseShared(leases=[1]))


def cut(port: int, on: bool) -> None:
    for direction in ("--dport", "--sport"):
        subprocess.run(["iptables", "-A" if on else "-D", "INPUT", "-p", "tcp", direction, str(port), "-j", "DROP"],
                       check=True)


def hold_the_gil_until_ended(client: socket.socket, seconds: float = 10) -> None:
    """Spins without releasing the GIL until the kernel has ended the connection, and 50 ms more: the
    reading thread, woken with the reason, cannot tell anyone before this thread's next send."""
    began = time.monotonic()
    while client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != ending.TCP_CLOSE:
        assert time.monotonic() - began < seconds, "the connection never ended"
    until = time.monotonic() + 0.05
    while time.monotonic() < until:
        pass


def one_round(how: str, deadlines: Deadlines) -> str:
    client, server = tcp_pair()
    framing.tune(client, silence=1.0)
    link = Link("peer", lambda *a: None, deadlines)
    link.transport = SocketTransport(link, client, None)
    link.transport.start()
    port = server.getsockname()[1]
    if how == "cut":
        cut(port, True)
        link.try_notify(NOTE)  # bytes never acknowledged: TCP_USER_TIMEOUT ends the connection after 1 s
    sys.setswitchinterval(100)
    if how == "reset":
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()  # sends RST
    hold_the_gil_until_ended(client)
    link.try_notify(NOTE)
    sys.setswitchinterval(0.005)
    time.sleep(0.1)
    if how == "cut":
        cut(port, False)
    server.close()
    link.close(RuntimeError("round over"))
    return f"{type(link.closed_with).__name__}: {link.closed_with}"


if __name__ == "__main__":
    deadlines = Deadlines()
    for _ in range(int(sys.argv[2])):
        print(one_round(sys.argv[1], deadlines), flush=True)
