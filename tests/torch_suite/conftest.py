"""The torch suite's session: one fork server every test's ranks start from, stopped at the end."""

from __future__ import annotations

import os
import signal
from multiprocessing import forkserver

import pytest


@pytest.fixture(scope="session", autouse=True)
def fork_server():
    """Started before the first test, so no test counts it as a process it left behind."""
    forkserver.ensure_running()
    yield
    pid = forkserver._forkserver._forkserver_pid
    if pid:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
