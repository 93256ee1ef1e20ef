"""The whole compiled core, torch-facing parts too, under AddressSanitizer and UBSan, as Python uses it:
it is built from the core's sources with the sanitizers (test_sanitized.py covers the pure C++ parts
with harnesses of their own), stands in for distautograd._core in every process (the runtimes are
preloaded, tests/native/sanitized_site), and runs the tests that feed it: both codecs and the planner
side by side, the recv nodes, a wave's leaves and engine call, a part's bookkeeping (over the engine's
random worlds), the watchdog of calls run by their reader, frames read and written on real sockets, pushes
run by the read that took them (the push lane), the fuzz test's hostile frames against a cluster of real
processes, and the backward protocol over sockets. Any read outside a buffer, use after free or
undefined behaviour aborts the process that did it, and its report lands in a log the test checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "distautograd" / "native" / "csrc"
SITE = Path(__file__).resolve().parent / "sanitized_site"
# -O0: each torch-including file builds in 21-25 s instead of 36-45 s at -O1, and no memory access is
# optimized away. UBSan's checks include its dynamic type checks (vptr) on torch's classes.
FLAGS = ["-O0", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
TESTS = {  # what feeds the core: codecs, planner and frames in one process; sockets between processes
    "in one process": ["tests/unit/test_tensor_codec.py", "tests/unit/test_tensor_codec_edges.py",
                       "tests/unit/test_tensor_lists.py", "tests/unit/test_pass_graphs.py", "tests/unit/test_nodes.py",
                       "tests/unit/test_slots.py", "tests/unit/test_frame_readers.py", "tests/unit/test_frame_writers.py",
                       "tests/unit/test_local_pass.py", "tests/unit/test_engine.py", "tests/unit/test_push_requests.py",
                       "tests/unit/test_push_reading.py", "tests/unit/test_transport_parts.py",
                       "tests/unit/test_push_lane.py"],
    "between processes": ["tests/cluster/test_fuzz.py", "tests/inprocess/test_backward.py",
                          "-k", "not python"],  # the oracle tests' Python-path half touches only the core's watchdog
}


def runtime(name: str) -> str:
    path = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) else ""


RUNTIMES = [runtime("libasan.so"), runtime("libubsan.so")] if shutil.which("g++") else []
pytestmark = pytest.mark.skipif(not RUNTIMES or not all(RUNTIMES) or shutil.which("ninja") is None,
                                reason="needs g++ with its AddressSanitizer and UBSan runtimes, and ninja")


def sanitized_env(core: Path, logs: Path) -> dict:
    return dict(os.environ, LD_PRELOAD=":".join(RUNTIMES), DISTAUTOGRAD_SANITIZED_CORE=str(core),
                ASAN_OPTIONS=f"detect_leaks=0:log_path={logs / 'asan'}",  # Python itself keeps memory at exit
                UBSAN_OPTIONS=f"print_stacktrace=1:log_path={logs / 'ubsan'}",
                PYTHONPATH=os.pathsep.join(p for p in (str(SITE), str(ROOT), os.environ.get("PYTHONPATH", "")) if p))


@pytest.fixture(scope="module")
def core(tmp_path_factory) -> Path:
    """The core built with the sanitizers, as one translation unit that includes every source: torch's
    headers are parsed once, 47 s instead of 117-124 s as separate files on two cores (a clash between
    two files' internal names would fail this build, not pass unnoticed)."""
    into = tmp_path_factory.mktemp("sanitized_core")
    unity = into / "core_unity.cpp"
    unity.write_text("".join(f'#include "{source}"\n' for source in sorted(CSRC.glob("*.cpp"))))
    build = (
        "import sys\n"
        "from torch.utils import cpp_extension\n"
        "cpp_extension.load(name='_core', sources=[sys.argv[1]], build_directory=sys.argv[2],"
        " extra_cflags=sys.argv[3:], extra_ldflags=['-fsanitize=address,undefined'], is_python_module=False)\n")
    env = dict(os.environ, LD_PRELOAD=":".join(RUNTIMES), ASAN_OPTIONS="detect_leaks=0")  # it loads what it built
    done = subprocess.run([sys.executable, "-c", build, str(unity), str(into), "-std=c++17", *FLAGS],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return into / "_core.so"


def run_python(args, core: Path, logs: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=sanitized_env(core, logs), cwd=ROOT)


def reports(logs: Path) -> str:
    return "\n".join(path.read_text(errors="replace")[:6000] for path in sorted(logs.glob("*san*")))


def test_every_process_of_the_tier_runs_the_sanitized_core(core, tmp_path):
    shown = run_python(["-c", "import distautograd.native as n; print(n.core.__file__, n.path_on())"],
                       core, tmp_path, 120)
    assert shown.returncode == 0, shown.stderr[-4000:]
    assert shown.stdout.split() == [str(core), "True"], shown.stdout


@pytest.mark.parametrize("where", list(TESTS))
def test_the_core_under_the_sanitizers(core, tmp_path, where):
    done = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS[where]],
                      core, tmp_path, 900)
    found = reports(tmp_path)
    assert not found, found
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout.splitlines()[-1], done.stdout[-2000:]
