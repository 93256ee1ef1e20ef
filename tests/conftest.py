"""What every tier shares: a check that no test leaves a process behind, and each tier's time limit.

The tiers: unit/ (one process, no sockets), inprocess/ (real agents and sockets in one process),
cluster/ (real processes and sockets), deploy/ (the compose file and the deployment files),
torch_suite/ (torch's own RPC tests from the installed wheel), native/ (the compiled core's sources
built with the sanitizers). Helpers live in tests/helpers/.
"""

from __future__ import annotations

import os
import pathlib

import pytest

# Per test, by tier; the global limit in pyproject.toml bounds them all. A test that waits longer for
# its processes says so with its own @pytest.mark.timeout.
TIER_TIMEOUTS = {"unit": 60, "inprocess": 60, "cluster": 300, "deploy": 900, "torch_suite": 150, "native": 300}


def pytest_collection_modifyitems(config, items) -> None:
    here = pathlib.Path(__file__).parent
    for item in items:
        tier = pathlib.Path(str(item.fspath)).relative_to(here).parts[0]
        if tier in TIER_TIMEOUTS and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIER_TIMEOUTS[tier]))


def _children(pid: int) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and not _is_resource_tracker(entry):
            found.append(int(entry))
    return found


def _is_resource_tracker(pid: str) -> bool:
    """multiprocessing starts one resource tracker per session on first use; it is not a test's leftover."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"resource_tracker" in f.read()
    except OSError:
        return False


@pytest.fixture(autouse=True)
def no_stray_processes(request):
    """Every child a test starts must be gone when it ends (session fixtures' children excepted)."""
    before = set(_children(os.getpid()))
    yield
    leftover = set(_children(os.getpid())) - before
    if leftover:
        pytest.fail(f"test left child processes running: {sorted(leftover)}")
