"""Shared fixtures: a session cluster (coordinator + 2 CLI workers) this process joins, and a leak check."""

from __future__ import annotations

import os

import pytest

from distautograd.testing import start_cluster


@pytest.fixture(scope="session")
def cluster():
    """A coordinator and workers worker1..worker3 as real processes; they may run tests.* functions."""
    c = start_cluster(3, allowed_modules=["tests"])
    yield c
    c.stop()


@pytest.fixture(scope="session")
def trainer(cluster):
    """This test process, joined to the session cluster as 'trainer'."""
    from distautograd import rpc

    rpc.init_rpc("trainer", rpc_backend_options=cluster.options(rpc_timeout=30))
    yield rpc.get_worker_info()
    rpc.shutdown(graceful=False)


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
