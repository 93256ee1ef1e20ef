"""A daemon thread inside the compiled core (GIL let go) when the process ends: Python ends any thread
that asks for the GIL during shutdown, and ending one inside a C++ destructor aborts the process
("terminate called without an active exception", seen in the bench). The core's threads wait for
the end instead (native/csrc/gil.h): the process exits cleanly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distautograd import native

pytestmark = pytest.mark.skipif(native.core is None, reason="the compiled core is not built")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("what", ["read", "write"])
def test_a_process_ending_while_the_core_waits_exits_cleanly(what):
    done = subprocess.run([sys.executable, "-m", "tests.helpers.native_shutdown", what], cwd=ROOT, timeout=60,
                          capture_output=True, text=True, env={**os.environ, "DISTAUTOGRAD_NATIVE_PATH": "1"})
    assert done.returncode == 0 and "terminate called" not in done.stderr, (done.returncode, done.stderr[-2000:])
