"""A process that ends while a daemon thread is inside the compiled core with the GIL let go: the
read (or write) returns only once the interpreter is shutting down. Exits 0 unless the core aborts
the process then. ``python -m tests.helpers.native_shutdown MODE``, MODE one of:

- ``read``, ``write``: the read (or write) returns once the interpreter is shutting down;
- ``late``: the read returns while an exit handler keeps the GIL, so the thread already waits for it
  when the core's exit handler runs (prints "waiting" once it does);
- ``after``: the same, with that exit handler run after the core's (the thread must not start waiting);
- ``fork``: forks while the thread waits for the GIL, and prints how many threads wait for it in the
  child ("child N") and in the parent ("parent N");
- ``main``: the main thread writes a frame in an exit handler run after the core's, and prints "written".
"""

import atexit
import gc
import os
import socket
import sys
import threading
import time

import torch  # noqa: F401  (the core needs torch's libraries loaded)

from distautograd import native
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import frames


class SlowTeardown:
    """Collected while the interpreter shuts down (a cycle, with the collector off until then): keeps
    it shutting down for a while."""

    def __init__(self):
        self.me = self

    def __del__(self):
        time.sleep(2.0)


def spin(seconds: float, until=lambda: False) -> bool:
    """Runs Python without letting the GIL go (a switch interval longer than this runs) for ``seconds``, or
    until ``until()``; whether that came."""
    sys.setswitchinterval(100.0)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if until():
            return True
    return False


def keep_the_gil_until_a_thread_waits(limit: float) -> bool:
    """Keeps the GIL until a thread waits for it in the core, for up to ``limit`` seconds; whether one did."""
    if not spin(limit, until=native.core.gil_waiting):
        return False
    spin(0.3)  # counted just before it asks for the GIL: a moment more, and it has
    return True


def hold_the_gil_until_the_reader_waits() -> None:
    """An exit handler that keeps the GIL while the peer closes, until the reader waits for it; says so."""
    if keep_the_gil_until_a_thread_waits(30.0):
        print("waiting", flush=True)


def hold_the_gil(seconds: float) -> None:
    """An exit handler that keeps the GIL for ``seconds`` while the peer closes (the core's exit handler
    ran before it: the reader must park, not wait for the GIL)."""
    spin(seconds)


def write_at_exit(sock: socket.socket, peer: socket.socket) -> None:
    frames.write_frame(sock, 1, "request", pb.Request(), [memoryview(bytes(64))], [], None)
    print("written", flush=True)


def main(what: str) -> None:
    if what == "main":
        ours, theirs = socket.socketpair()
        atexit.unregister(native.core.close_gil_at_exit)  # registered again after: so it runs first
        atexit.register(write_at_exit, ours, theirs)  # the peer stays open, reading nothing
        atexit.register(native.core.close_gil_at_exit)
        return
    ours, theirs = socket.socketpair()
    if os.fork() == 0:  # the peer: reads nothing, and closes its end once we are shutting down
        ours.close()
        time.sleep(1.0)
        theirs.close()
        os._exit(0)
    theirs.close()
    if what in ("read", "late", "after", "fork"):
        reader = frames.NativeReader(ours)
        work = lambda: reader.read_frame(1 << 20)  # noqa: E731
    else:
        work = lambda: frames.write_frame(ours, 1, "request", pb.Request(), [memoryview(bytes(64 << 20))], [], None)  # noqa: E731
    threading.Thread(target=work, daemon=True).start()
    time.sleep(0.3)  # the thread waits in the core now
    if what == "fork":  # the peer closes at 1.0 s, while this thread keeps the GIL: the reader waits for it
        keep_the_gil_until_a_thread_waits(30.0)
        pid = os.fork()
        if pid == 0:
            print("child", native.core.gil_waiting(), flush=True)
            os._exit(0)
        print("parent", native.core.gil_waiting(), flush=True)  # before waiting, which lets the GIL go
        os.waitpid(pid, 0)
        sys.setswitchinterval(0.005)
    # Only these exit handlers, last registered first: no other (logging's flush, say) lets the GIL go
    # between them and the shutdown, which would let a waiting reader have it in time by chance.
    if what == "late":  # the reader waits for the GIL before the core's exit handler runs
        atexit._clear()
        atexit.register(native.core.close_gil_at_exit)
        atexit.register(hold_the_gil_until_the_reader_waits)
    if what == "after":  # the reader wakes after it ran
        atexit._clear()
        atexit.register(hold_the_gil, 1.5)
        atexit.register(native.core.close_gil_at_exit)
    gc.disable()
    SlowTeardown()


if __name__ == "__main__":
    main(sys.argv[1])
