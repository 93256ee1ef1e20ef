"""A daemon thread inside the compiled core (GIL let go) when the process ends: Python ends any thread
that asks for the GIL during shutdown, and ending one inside a C++ destructor aborts the process
("terminate called without an active exception", seen in the bench). The core's threads wait for
the end instead (native/csrc/gil.h): the process exits cleanly. Also one already waiting for the GIL when
shutdown begins (the core's exit handler lets it have the GIL first), one that wakes after that handler
ran (it must not start waiting), a child forked while one waits (it has no such thread), and the main
thread itself, which goes on using the core in exit handlers run after the core's."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from distautograd import native

pytestmark = pytest.mark.skipif(native.core is None, reason="the compiled core is not built")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("what", ["read", "write", "late", "after", "fork", "main"])
def test_a_process_ending_while_the_core_waits_exits_cleanly(what):
    done = subprocess.run([sys.executable, "-m", "tests.helpers.native_shutdown", what], cwd=ROOT, timeout=60,
                          capture_output=True, text=True, env={**os.environ, "DISTAUTOGRAD_NATIVE_PATH": "1"})
    assert done.returncode == 0 and "terminate called" not in done.stderr, (done.returncode, done.stderr[-2000:])
    if what == "main":
        assert done.stdout == "written\n", done.stdout
    if what == "late":  # the reader was waiting for the GIL when the exit handlers went on to shutdown
        assert done.stdout == "waiting\n", done.stdout
    if what == "fork":  # a child counts no thread waiting for the GIL (its exit handler would wait a second)
        assert sorted(done.stdout.split("\n")) == ["", "child 0", "parent 1"], done.stdout


def test_a_thread_that_took_the_gil_back_is_no_longer_counted_as_waiting():
    """Else the exit handler would wait its full second at every exit for threads long done."""
    from distautograd.protocol.v1 import messages_pb2 as pb
    from distautograd.transport import frames

    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader = frames.NativeReader(theirs)
        for _ in range(3):  # each write and read lets the GIL go and takes it back
            frames.write_frame(ours, 1, "request", pb.Request(), [memoryview(bytes(64))], [], None)
            reader.read_frame(1 << 20)
    assert native.core.gil_waiting() == 0
