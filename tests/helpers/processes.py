"""Running things as other processes and waiting for them, the ways the tests need: drivers, snippets, polls."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Callable, Optional

from distautograd.runtime.rendezvous import free_port  # noqa: F401  (one helper for every test)


def child_env(extra: Optional[dict] = None) -> dict:
    """This environment, with the repository first on PYTHONPATH (what was there stays after it, as
    distautograd.testing does for the cluster's processes: the sanitized tier puts its start-up hook there)."""
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **(extra or {}))


def run_python(code: str, timeout: float = 60, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter; returns the completed process (never raises on failure)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=child_env(env))


def run_driver(*args: str, timeout: float = 90, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Runs a scenario of tests.helpers.drivers as its own process; fails the test with its output if it fails."""
    result = subprocess.run([sys.executable, "-m", "tests.helpers.drivers", *args], capture_output=True, text=True,
                            timeout=timeout, env=child_env(env))
    assert result.returncode == 0, f"driver failed:\n{result.stdout}\n{result.stderr}"
    return result


def poll_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """True as soon as ``predicate()`` is; False if it still is not after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def outside_context(fn, *args):
    """Runs ``fn`` in a fresh thread (rpcs made inside a context would join it to the context);
    returns what it returns, raises what it raises."""
    outcome = []

    def run():
        try:
            outcome.append((True, fn(*args)))
        except BaseException as exc:
            outcome.append((False, exc))

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    if not outcome:
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not return within 60 s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def run_spawned(fn, nprocs: int = 3, timeout: float = 90) -> None:
    """Runs ``fn(rank, nprocs, port)`` in ``nprocs`` processes (torch.multiprocessing.spawn);
    kills and reaps them all on failure or timeout."""
    import torch.multiprocessing as mp

    context = mp.start_processes(fn, args=(nprocs, free_port()), nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{fn.__name__} did not finish within {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join(10)
