"""Skip marks for tests that need a Debian program the README's test command installs."""

from __future__ import annotations

import shutil

import pytest

NEEDS_IPTABLES = pytest.mark.skipif(
    shutil.which("iptables") is None, reason="needs Debian's iptables (the README's test command installs it)")
