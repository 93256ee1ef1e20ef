"""How a socket connection ended, decided once from the first call the kernel told the reason to."""

from __future__ import annotations

import errno
import socket
import threading
from typing import Optional

from distautograd import errors

SILENT = {errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
TCP_CLOSE = 7  # tcp_info.tcpi_state of a connection the kernel ended (timed out or reset)
WAIT_FOR_FIRST = 1.0  # seconds a call told only EPIPE waits for the call that was told why


def lost(peer: str, exc: BaseException) -> errors.Unavailable:
    """What a broken connection means: a peer that stopped answering (timed out, no route) is
    unreachable and may come back; one whose kernel closed or reset the connection is gone."""
    if isinstance(exc, OSError) and exc.errno in SILENT:
        return errors.Unreachable(f"{peer} is unreachable: its connection timed out ({exc})")
    return errors.Unavailable(f"connection to {peer} lost: {exc}")


class Ending:
    """The kernel reports why a connection ended (ETIMEDOUT, ECONNRESET) once, to whichever call
    asks first — the reading thread's recv or some sender's sendmsg; every later send gets EPIPE and
    every later recv an end of file. Judged on its own, such a call would call a partitioned peer dead.
    So the first call records the reason and the others take it from here."""

    def __init__(self, peer: str, sock: socket.socket):
        self._peer = peer
        self._sock = sock
        self._lock = threading.Lock()
        self._verdict: Optional[errors.Unavailable] = None
        self._known = threading.Event()

    def judge(self, exc: BaseException) -> errors.Unavailable:
        """The verdict on the connection whose call raised ``exc`` (an OSError or EOFError)."""
        if self._told_second(exc):
            # The call that was told may not have said so yet (it waits for the GIL): wait, briefly.
            self._known.wait(WAIT_FOR_FIRST)
        with self._lock:
            if self._verdict is None:
                self._verdict = lost(self._peer, exc)
                self._known.set()
            return self._verdict

    def _told_second(self, exc: BaseException) -> bool:
        if isinstance(exc, OSError):
            return exc.errno == errno.EPIPE
        # An end of file from a connection the kernel ended (rather than a peer's FIN): the reason
        # went to a send.
        return isinstance(exc, EOFError) and self._state() == TCP_CLOSE

    def _state(self) -> Optional[int]:
        if self._sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        try:
            return self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        except OSError:  # closed here meanwhile
            return None
