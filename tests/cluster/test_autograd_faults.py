"""Failure is an error, never a hang: workers killed mid-pass, creators that die, many trainers at once."""

import os
import subprocess
import sys
import time

import pytest

from distautograd.testing import run_together, start_cluster
from tests.helpers.processes import run_driver

pytestmark = pytest.mark.slow


def test_a_worker_killed_during_backward_fails_the_pass_and_survivors_free_the_context():
    cluster = start_cluster(2, allowed_modules=["tests"])
    try:
        victim = cluster.worker("worker2")
        result = run_driver("worker_killed_during_backward", cluster.coordinator, "worker2", str(victim.process.pid))
        assert "naming worker2" in result.stdout
    finally:
        cluster.stop()


@pytest.mark.parametrize("how", ["slow", "stopped"])
def test_a_worker_that_hangs_mid_backward_fails_the_pass_by_timeout(how):
    cluster = start_cluster(2, allowed_modules=["tests"],
                            coordinator_args=["--heartbeat-timeout", "2", "--heartbeat-interval", "0.2"],
                            worker_args=["--heartbeat-interval", "0.2"])
    try:
        victim = cluster.worker("worker2")
        result = run_driver("hung_backward_fails_by_timeout", cluster.coordinator, "worker2", str(victim.process.pid),
                            how)
        assert "backward failed" in result.stdout
    finally:
        cluster.stop()


def test_a_context_whose_creator_died_is_released_after_its_ttl():
    cluster = start_cluster(1, allowed_modules=["tests"], worker_args=["--context-ttl", "6"])
    try:
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        creator = subprocess.run(
            [sys.executable, "-m", "tests.helpers.drivers", "creator_dies_holding_a_context", cluster.coordinator],
            capture_output=True, text=True, timeout=60, env=env,
        )
        died_at = time.time()
        assert creator.returncode == -9 and "open on worker1" in creator.stdout, creator.stderr
        result = run_driver("orphaned_context_is_released", cluster.coordinator, "6", str(died_at))
        assert "released" in result.stdout
    finally:
        cluster.stop()


def test_three_trainers_with_twenty_threads_each_never_mix_gradients():
    cluster = start_cluster(1, names=["ps"], allowed_modules=["tests"], worker_args=["--threads", "64"])
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    try:
        results = run_together(
            [[sys.executable, "-m", "tests.helpers.drivers", "concurrent_trainers", cluster.coordinator, f"trainer{i}", "20", "5"]
             for i in range(3)],
            timeout=240, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for result in results:
            assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
            assert "100 passes" in result.stdout
    finally:
        cluster.stop()
