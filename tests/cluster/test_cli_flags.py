"""`distautograd worker` takes the options as flags, and each flag changes what the worker does."""

import subprocess
import sys
import time

from distautograd.testing import start_cluster
from tests.helpers.processes import free_port, run_driver

LIMIT = 4 << 20


def test_shared_memory_off_and_a_message_limit_are_obeyed():
    cluster = start_cluster(2, allowed_modules=["tests"],
                            worker_args=["--shared-memory", "off", "--max-message-bytes", str(LIMIT)])
    try:
        assert "flags took effect" in run_driver("worker_flags_took_effect", cluster.coordinator, str(LIMIT)).stdout
    finally:
        cluster.stop()


def test_transport_grpc_makes_workers_reach_each_other_over_grpc():
    cluster = start_cluster(2, allowed_modules=["tests"], worker_args=["--transport", "grpc"])
    try:
        # this side is on auto, but workers on gRPC only offer no socket: every path is gRPC, none shares memory
        assert "all calls over grpc" in run_driver("every_path_works", cluster.coordinator, "grpc", "0").stdout
    finally:
        cluster.stop()


def test_init_timeout_bounds_the_wait_for_a_coordinator_that_is_not_there():
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "distautograd.cli", "worker", "--name", "w", "--coordinator",
         f"127.0.0.1:{free_port()}", "--init-timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and "within 1 s" in result.stderr, result.stderr
    assert elapsed < 15, f"{elapsed:.1f} s: the flag did not bound the wait (the default is the 60 s rpc timeout)"


def test_a_flag_value_that_means_nothing_is_refused_with_the_choices():
    for flag, value in (("--transport", "pigeon"), ("--shared-memory", "maybe")):
        result = subprocess.run([sys.executable, "-m", "distautograd.cli", "worker", "--name", "w", flag, value],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and value in result.stderr, result.stderr
