"""Real programs, started as users start them, run with nothing configured (tests/programs/)."""

import os
import subprocess
import sys

from tests.helpers.processes import free_port

PROGRAMS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "programs")


def run_program(*argv, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.path.join(PROGRAMS, "library"))
    env.pop("DISTAUTOGRAD_ALLOW_MODULES", None)
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=PROGRAMS)


def test_the_programs_own_modules_and_library_models_work_without_an_allowlist(tmp_path):
    marker = tmp_path / "library function ran"
    result = run_program(os.path.join(PROGRAMS, "two_ranks", "main.py"), str(free_port()), str(marker))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "program checks passed" in result.stdout
    assert not marker.exists()


def test_a_rank_that_does_not_trust_the_program_refuses_its_modules(tmp_path):
    result = run_program(os.path.join(PROGRAMS, "two_ranks", "main.py"), str(free_port()), str(tmp_path / "m"),
                         "untrusted")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "untrusted checks passed" in result.stdout
