"""The pytest plugin users get: the README's local_cluster example runs as written, and leaves nothing behind."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Testing your own code"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_passes_in_a_fresh_pytest(tmp_path):
    test_file = tmp_path / "test_readme_example.py"
    test_file.write_text(readme_example().replace('allowed_modules=["mymodels"]', "allowed_modules=[]"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_failing_test_still_reaps_its_cluster(tmp_path):
    test_file = tmp_path / "test_fails.py"
    test_file.write_text(
        "import os\n"
        "def test_fails(local_cluster):\n"
        "    open(os.environ['PIDS'], 'w').write(' '.join(str(w.process.pid) for w in local_cluster.workers)"
        " + ' ' + str(local_cluster.coordinator_process.pid))\n"
        "    assert False, 'on purpose'\n"
    )
    pids_file = tmp_path / "pids"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT), PIDS=str(pids_file)),
    )
    assert result.returncode == 1 and "on purpose" in result.stdout
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 3
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_run_together_collects_every_output_and_reaps_what_outlives_its_time(tmp_path):
    from distautograd.testing import run_together

    say = [sys.executable, "-c", "import os; print(os.environ['WHO'])"]
    results = run_together([say, say], timeout=30, envs=[dict(os.environ, WHO="a"), dict(os.environ, WHO="b")],
                           stdout=subprocess.PIPE, text=True)
    assert [(r.returncode, r.stdout.strip()) for r in results] == [(0, "a"), (0, "b")]

    marker = tmp_path / "pid"
    sleeper = [sys.executable, "-c", f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)"]
    try:
        run_together([sleeper], timeout=2)
        raise AssertionError("a command past its time must raise")
    except subprocess.TimeoutExpired:
        pass
    pid = int(marker.read_text())
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped, not left as a zombie
