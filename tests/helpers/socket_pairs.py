"""Connected socket pairs for tests that read and write frames: Unix, and TCP on loopback."""

import socket


def tcp_pair():
    """(client, server) of one TCP connection on 127.0.0.1."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def pair(family: str):
    """A connected pair: ``"unix"`` or ``"tcp"``."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if family == "unix" else tcp_pair()
