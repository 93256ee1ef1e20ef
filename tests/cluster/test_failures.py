"""Errors that help: init mistakes, dead and stopped peers, duplicate names, clean stops on SIGTERM."""

import os
import re
import signal
import sys
import time

from distautograd.testing import Process, start_cluster
from tests.helpers.processes import free_port, run_driver, run_python


def test_any_call_before_init_rpc_says_to_call_it():
    result = run_python(
        """
        from distautograd import rpc
        from distautograd import autograd as dist_autograd
        for call in (lambda: rpc.rpc_sync("w", print), lambda: rpc.remote("w", print), rpc.get_worker_info,
                     lambda: rpc.rpc_async("w", print), rpc.shutdown, lambda: dist_autograd.context().__enter__()):
            try:
                call()
            except RuntimeError as e:
                assert "RPC has not been initialized. Call distautograd.rpc.init_rpc first." in str(e), e
            else:
                raise SystemExit("no error")
        print("all refused")
        """
    )
    assert result.returncode == 0 and "all refused" in result.stdout, result.stderr


def test_init_times_out_naming_the_ranks_that_never_came():
    port = free_port()
    start = time.monotonic()
    result = run_python(
        f"""
        import os
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{port}")
        from distautograd import rpc
        rpc.init_rpc("w0", rank=0, world_size=3, rpc_backend_options=rpc.BackendOptions(init_timeout=2))
        """
    )
    assert result.returncode != 0
    assert "rank(s) 1, 2 never joined" in result.stderr and "w0 (rank 0)" in result.stderr, result.stderr
    assert time.monotonic() - start < 30


def test_init_without_a_coordinator_address_says_what_to_set():
    result = run_python(
        """
        import os
        for k in ("MASTER_ADDR", "MASTER_PORT", "DISTAUTOGRAD_COORDINATOR"):
            os.environ.pop(k, None)
        from distautograd import rpc
        rpc.init_rpc("w0", rank=0, world_size=1)
        """
    )
    assert "set MASTER_ADDR and MASTER_PORT" in result.stderr, result.stderr


def test_duplicate_name_names_the_holder(cluster):
    worker1 = cluster.worker("worker1")
    proc = Process(
        [sys.executable, "-m", "distautograd.cli", "worker", "--name", "worker1", "--coordinator", cluster.coordinator],
        dict(os.environ, PYTHONPATH=os.getcwd()),
        "duplicate",
    )
    code = proc.popen.wait(60)
    proc.stop()
    out = proc.tail()
    assert code == 2
    assert (f"worker name 'worker1' is not unique: it is already taken by rank {worker1.rank} at {worker1.address}"
            in out), out


def test_dead_peer_fails_the_call_at_once_naming_it():
    cluster = start_cluster(2, allowed_modules=["tests"])
    try:
        victim = cluster.worker("worker2")
        result = run_driver("dead_peer_fails_fast", cluster.coordinator, "worker2", str(victim.process.pid))
        assert "worker2" in result.stdout
        victim.process.popen.wait(10)
    finally:
        cluster.stop()
    assert "failed" in cluster.coordinator_process.tail() and "worker2" in cluster.coordinator_process.tail()


def test_forks_held_by_a_worker_that_dies_are_dropped_with_it():
    cluster = start_cluster(2, allowed_modules=["tests"])
    try:
        holder = cluster.worker("worker2")
        result = run_driver("forks_of_a_dead_worker_are_dropped", cluster.coordinator, "worker2",
                            str(holder.process.pid))
        assert "freed" in result.stdout
    finally:
        cluster.stop()


def test_a_worker_that_stops_answering_is_declared_dead_by_heartbeat():
    cluster = start_cluster(
        2, allowed_modules=["tests"], coordinator_args=["--heartbeat-timeout", "2", "--heartbeat-interval", "0.2"],
        worker_args=["--heartbeat-interval", "0.2"],
    )
    try:
        victim = cluster.worker("worker2")
        result = run_driver("stopped_peer_is_declared_dead", cluster.coordinator, "worker2", str(victim.process.pid))
        elapsed = float(re.search(r"failed after ([0-9.]+)s", result.stdout).group(1))
        assert "heartbeat" in result.stdout and 1.8 <= elapsed <= 4.5, result.stdout  # timeout 2 s, beats 0.2 s
    finally:
        cluster.stop()


def test_a_trainer_that_comes_back_under_its_name_starts_clean(cluster):
    """Its new RRef and context ids must not collide with those its first life freed on worker1."""
    for _ in range(2):
        assert "trainer done" in run_driver("short_lived_trainer", cluster.coordinator).stdout


def test_sigterm_stops_workers_and_coordinator_cleanly():
    cluster = start_cluster(2)
    try:
        w = cluster.worker("worker1")
        start = time.monotonic()
        w.process.signal(signal.SIGTERM)
        assert w.process.popen.wait(10) == 0
        assert time.monotonic() - start < 4, "a clean stop takes a second or two, not the wait's whole bound"
        coordinator = cluster.coordinator_process
        deadline = time.monotonic() + 5
        while f"worker worker1 (rank {w.rank}) left" not in coordinator.tail() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"worker worker1 (rank {w.rank}) left" in coordinator.tail(), coordinator.tail()
        coordinator.signal(signal.SIGTERM)
        assert coordinator.popen.wait(10) == 0
        assert coordinator.tail().count("joined as rank") == 2
    finally:
        cluster.stop()
