"""The compiled core's pure C++ parts under AddressSanitizer and UBSan: each harness in tests/native is
built here from the core's own sources (no Python, no torch in the binary) and fed hostile input --
envelopes and streams for the frame reader, frames the writer sends read back, Values for the tensor-list reader,
frames carrying pushes for the push reader; any read outside a
buffer or undefined behaviour fails it. The seed varies per run and is printed;
DISTAUTOGRAD_FUZZ_SEED replays one."""

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "distautograd" / "native" / "csrc"
HARNESSES = {  # harness -> the core's sources it tests
    "sanitized_frames": ["wire.cpp", "envelope.cpp", "frame_reader.cpp", "frame_writer.cpp"],
    "sanitized_tensor_lists": ["wire.cpp", "tensor_list.cpp"],
    "sanitized_pushes": ["wire.cpp", "tensor_list.cpp", "push_reading.cpp"],
}
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def build(name: str, into: Path) -> Path:
    binary = into / name
    done = subprocess.run(
        ["g++", "-std=c++17", "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-fno-omit-frame-pointer", f"-I{CSRC}", str(ROOT / "tests" / "native" / f"{name}.cpp"),
         *[str(CSRC / source) for source in HARNESSES[name]], "-lpthread", "-o", str(binary)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return binary


def run(binary: Path, rounds: int) -> str:
    seed = int(os.environ.get("DISTAUTOGRAD_FUZZ_SEED", random.randrange(1 << 63)))
    print(f"seed {seed}")
    done = subprocess.run([str(binary), str(seed), str(rounds)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0"})
    assert done.returncode == 0 and "Sanitizer" not in done.stderr, (seed, done.stdout[-2000:], done.stderr[-4000:])
    assert done.stdout.startswith(f"seed {seed}: {rounds} "), done.stdout
    return done.stdout


def test_hostile_envelopes_and_streams_under_the_sanitizers(tmp_path):
    run(build("sanitized_frames", tmp_path), 40000)


def test_hostile_tensor_lists_under_the_sanitizers(tmp_path):
    out = run(build("sanitized_tensor_lists", tmp_path), 40000)
    assert "(0 read as lists" not in out and ", 0 with tensors read)" not in out, out  # both ways were taken


def test_hostile_pushes_under_the_sanitizers(tmp_path):
    out = run(build("sanitized_pushes", tmp_path), 40000)
    assert "(0 changed ones taken)" not in out, out  # some changed frames still read as pushes: both ways taken
