"""A real install: `python -m build` makes a wheel and an sdist; the wheel, installed into a fresh venv
(not editable, run from outside the repository), starts a world, trains a step and draws a graph.

This is what only a plain install finds: a module the runtime imports that no dependency brings
(PyYAML once), a data file the package reads that the wheel leaves out. The wheel is built without
the compiled core (DISTAUTOGRAD_NATIVE=0: the C++ build takes minutes; the package says it runs its
Python path); the sdist carries the C++ sources so that building from it builds the core.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SMOKE = textwrap.dedent("""
    import os, sys
    import torch
    import torch.multiprocessing as mp
    import distautograd
    from distautograd import rpc
    from distautograd import autograd as dist_autograd
    from distautograd.optim import DistributedOptimizer
    from distautograd.views import export

    def run(rank, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        rpc.init_rpc(f"w{rank}", rank=rank, world_size=2)
        if rank == 0:
            w = torch.randn(3, 3, requires_grad=True)
            before = w.detach().clone()
            optimizer = DistributedOptimizer(torch.optim.SGD, [rpc.RRef(w)], lr=0.5)
            with dist_autograd.context() as context_id:
                y = rpc.rpc_sync("w1", torch.tanh, args=(w,))
                dist_autograd.backward(context_id, [y.sum()])
                grad = dist_autograd.get_gradients(context_id)[w]
                assert torch.allclose(grad, 1 - torch.tanh(before) ** 2), grad
                optimizer.step(context_id)
                assert torch.allclose(w.detach(), before - 0.5 * grad)
                page = export.to_html(dist_autograd.graph(context_id))
                assert "TanhBackward0" in page and "tanh_backward" in page, page[:500]  # torch's formula, via torchgen
        rpc.shutdown()

    if __name__ == "__main__":
        assert "site-packages" in distautograd.__file__, distautograd.__file__
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(run, args=(port,), nprocs=2)
        print("smoke ok")
""")


def test_the_wheel_installs_into_a_fresh_venv_and_runs_a_world(tmp_path):
    out = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=600, env=dict(os.environ, DISTAUTOGRAD_NATIVE="0"))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "distautograd/py.typed" in names and "distautograd/protocol/v1/messages_pb2.py" in names
    assert not any(n.startswith("tests/") for n in names)
    with tarfile.open(sdist) as archive:
        sources = archive.getnames()
    assert any(n.endswith("distautograd/native/csrc/bindings.cpp") for n in sources)
    assert any(n.endswith("/setup.py") for n in sources) and any(n.endswith("/pyproject.toml") for n in sources)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    smoke = subprocess.run([str(venv / "bin" / "python"), str(script)], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path, env=env)
    assert smoke.returncode == 0 and "smoke ok" in smoke.stdout, smoke.stdout[-3000:] + smoke.stderr[-5000:]
    assert "running the Python path" in smoke.stderr  # built without the core, and it says so
    typed = subprocess.run([str(venv / "bin" / "python"), "-c", "import distautograd, pathlib; print(pathlib.Path("
                            "distautograd.__file__).with_name('py.typed').exists())"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert typed.stdout.strip() == "True"
