"""The README's main command: the demo trains across local workers and its gradients match torch."""

import os
import subprocess
import sys


def test_demo_trains_and_matches_single_process_gradients():
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    result = subprocess.run(
        [sys.executable, "-m", "distautograd.cli", "demo", "--steps", "60", "--check-every", "20"],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "step   60/60" in out and "loss fell from" in out
    assert "gradients match" in out and out.count(" yes") == 6
    assert "ms for the same model in one process" in out
