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
    assert "gradients are bit-identical" in out and out.count(" yes") == 6
    assert "ms for the same model in one process" in out


def test_demo_writes_the_trace_and_the_graph_of_a_step(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    trace, graph = tmp_path / "step.json", tmp_path / "step.html"
    result = subprocess.run(
        [sys.executable, "-m", "distautograd.cli", "demo", "--steps", "10", "--check-every", "5",
         "--trace", str(trace), "--graph", str(graph)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    import json

    names = {e["args"]["name"] for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "M"
             and e["name"] == "process_name"}
    assert names == {"trainer", "stage1", "stage2", "stage3"}
    page = graph.read_text()
    assert page.count('class="node"') == 20 and "AddmmBackward0" in page and "Stage.layer.weight" in page
