"""The compiled frame reader under AddressSanitizer and UBSan: tests/native/sanitized_frames.cpp,
built here from the core's own sources (no Python, no torch in the binary), fed hostile envelopes and
streams; any read outside a buffer or undefined behaviour fails it. The seed varies per run and is
printed; DISTAUTOGRAD_FUZZ_SEED replays one."""

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["wire.cpp", "envelope.cpp", "frame_reader.cpp"]
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    binary = tmp_path_factory.mktemp("sanitized") / "sanitized_frames"
    csrc = ROOT / "distautograd" / "native" / "csrc"
    build = subprocess.run(
        ["g++", "-std=c++17", "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-fno-omit-frame-pointer", f"-I{csrc}", str(ROOT / "tests" / "native" / "sanitized_frames.cpp"),
         *[str(csrc / name) for name in SOURCES], "-lpthread", "-o", str(binary)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    return binary


def test_hostile_envelopes_and_streams_under_the_sanitizers(sanitized):
    seed = int(os.environ.get("DISTAUTOGRAD_FUZZ_SEED", random.randrange(1 << 63)))
    print(f"seed {seed}")
    run = subprocess.run([str(sanitized), str(seed), "40000"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0"})
    assert run.returncode == 0 and "Sanitizer" not in run.stderr, (seed, run.stderr[-4000:])
    assert run.stdout.startswith(f"seed {seed}: 40000 envelopes"), run.stdout
