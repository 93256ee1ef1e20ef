"""The pytest plugin users get: the README's local_cluster example runs as written, and leaves nothing behind."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
