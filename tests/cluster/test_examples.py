"""The examples, each run the ways users run them: alone, under torchrun, and one process per rank by hand."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distautograd.testing import run_together
from tests.helpers.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(argv, env=None, timeout=240) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env=dict(os.environ, **(env or {})))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_parameter_server_trains_with_two_concurrent_trainers():
    out = run([sys.executable, "examples/parameter_server.py", "--steps", "60"])
    assert out.count("learned: held-out loss below 0.3") == 2


def test_pipeline_trains_and_prints_both_timings():
    out = run([sys.executable, "examples/pipeline.py"])  # as the README runs it: 30 steps, the loss below 0.5
    assert "without micro-batches" in out and "ms/step" in out and "learned: final loss below 0.5" in out


def test_rnn_trains_with_embedding_and_decoder_on_the_server():
    out = run([sys.executable, "examples/rnn.py", "--steps", "80"])
    assert "learned: held-out loss below 0.5" in out


def test_ddp_rpc_matches_a_single_process_run():
    out = run([sys.executable, "examples/ddp_rpc.py", "--steps", "12"])
    assert "after 12 steps the parameters match a single-process run" in out


def test_gradient_penalty_matches_a_single_process_run_bit_for_bit():
    out = run([sys.executable, "examples/gradient_penalty.py", "--steps", "8"])
    assert "after 8 steps the parameters match a single-process run: bit for bit" in out


def test_torchrun_launches_an_example():
    out = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3", "examples/parameter_server.py",
               "--steps", "30"])
    assert out.count("learned") == 2


def test_one_process_per_rank_by_hand():
    port = free_port()
    ranks = (1, 0)  # the server first: ranks may start in any order
    results = run_together(
        [[sys.executable, "examples/rnn.py", "--steps", "60"]] * len(ranks), timeout=240,
        envs=[dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
              for rank in ranks],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    outputs = [result.stdout for result in results]
    assert all(result.returncode == 0 for result in results), outputs
    assert "learned" in outputs[1]


def test_wrong_world_size_is_a_clear_error():
    result = subprocess.run([sys.executable, "examples/rnn.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, RANK="0", WORLD_SIZE="5", MASTER_ADDR="127.0.0.1", MASTER_PORT="1"))
    assert result.returncode == 2 and "needs 2 processes (trainer, ps), got WORLD_SIZE=5" in result.stderr


def test_the_readmes_first_training_script_as_written(tmp_path):
    """Its one python block under "A training script", with only the port made free; its printed gradient
    against single-process torch, every digit of a float32 printed. A sitecustomize seeds torch in every
    process, so the spawned rank 0 draws the w a fresh process draws (rpc draws nothing from torch's generator)."""
    readme = (ROOT / "README.md").read_text()
    script = readme.split("## A training script", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert script.count('MASTER_PORT="29500"') == 1
    path = tmp_path / "script.py"
    path.write_text(script.replace('MASTER_PORT="29500"', f'MASTER_PORT="{free_port()}"'))
    (tmp_path / "sitecustomize.py").write_text("import torch\ntorch.manual_seed(0)\ntorch.set_printoptions(precision=12)\n")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    printed = run([sys.executable, str(path)], env=env, timeout=120).strip()
    expected = run([sys.executable, "-c", "import torch; w = torch.randn(3, requires_grad=True); "
                    "torch.exp(torch.mul(w, 2)).sum().backward(); print(w.grad)"], env=env).strip()
    assert printed == expected, (printed, expected)
