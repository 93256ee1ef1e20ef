"""A daemon thread inside the compiled core (GIL let go) when the process ends: Python ends any thread
that asks for the GIL during shutdown, and ending one inside a C++ destructor aborts the process
("terminate called without an active exception", seen in the bench). The core's threads wait for
the end instead (native/csrc/gil.h): the process exits cleanly. Also one already waiting for the GIL when
shutdown begins (the core's exit handler lets it have the GIL first), one that wakes after that handler
ran (it must not start waiting), and the main thread itself, which
goes on using the core in exit handlers run after the core's."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distautograd import native

pytestmark = pytest.mark.skipif(native.core is None, reason="the compiled core is not built")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("what", ["read", "write", "late", "after", "main"])
def test_a_process_ending_while_the_core_waits_exits_cleanly(what):
    done = subprocess.run([sys.executable, "-m", "tests.helpers.native_shutdown", what], cwd=ROOT, timeout=60,
                          capture_output=True, text=True, env={**os.environ, "DISTAUTOGRAD_NATIVE_PATH": "1"})
    assert done.returncode == 0 and "terminate called" not in done.stderr, (done.returncode, done.stderr[-2000:])
    if what == "main":
        assert done.stdout == "written\n", done.stdout
