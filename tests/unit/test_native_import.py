"""The compiled core loads whichever module a process imports first: it links against torch's libraries,
which only importing torch puts in the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from distautograd import native


@pytest.mark.skipif(native.core is None, reason="the compiled core is not built")
def test_importing_the_core_first_loads_it():
    shown = subprocess.run(
        [sys.executable, "-c", "import sys; import distautograd.native as n; print(n.message_path(), 'torch' in sys.modules)"],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["native", "True"], shown.stdout + shown.stderr
