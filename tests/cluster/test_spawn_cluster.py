"""Three processes started with torch.multiprocessing.spawn + init_rpc, as users start training scripts."""

import time

import torch.multiprocessing as mp

from tests.helpers import spawned
from tests.helpers.processes import free_port


def run_spawned(fn, nprocs: int = 3, timeout: float = 90) -> None:
    """Runs ``fn(rank, nprocs, port)`` in ``nprocs`` processes; kills them all on failure or timeout."""
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


def test_every_verb_between_three_spawned_processes():
    run_spawned(spawned.every_verb)


def test_graceful_shutdown_waits_for_everyone_and_serves_late_calls():
    start = time.monotonic()
    run_spawned(spawned.graceful_shutdown_serves_late_calls, nprocs=2)
    assert time.monotonic() - start < 60
