"""A process that ends while a daemon thread is inside the compiled core with the GIL let go: the
read (or write) returns only once the interpreter is shutting down. Exits 0 unless the core aborts
the process then. ``python -m tests.helpers.native_shutdown read|write``."""

import gc
import os
import socket
import sys
import threading
import time

import torch  # noqa: F401  (the core needs torch's libraries loaded)

from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import frames


class SlowTeardown:
    """Collected while the interpreter shuts down (a cycle, with the collector off until then): keeps
    it shutting down for a while."""

    def __init__(self):
        self.me = self

    def __del__(self):
        time.sleep(2.0)


def main(what: str) -> None:
    ours, theirs = socket.socketpair()
    if os.fork() == 0:  # the peer: reads nothing, and closes its end once we are shutting down
        ours.close()
        time.sleep(1.0)
        theirs.close()
        os._exit(0)
    theirs.close()
    if what == "read":
        reader = frames.NativeReader(ours)
        work = lambda: reader.read_frame(1 << 20)  # noqa: E731
    else:
        work = lambda: frames.write_frame(ours, 1, "request", pb.Request(), [memoryview(bytes(64 << 20))], [], None)  # noqa: E731
    threading.Thread(target=work, daemon=True).start()
    time.sleep(0.3)  # the thread waits in the core now
    gc.disable()
    SlowTeardown()


if __name__ == "__main__":
    main(sys.argv[1])
