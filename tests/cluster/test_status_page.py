"""The coordinator's live status page in headless chromium against a real cluster (workers listed, a
killed one dead within the heartbeat timeout, no console errors), and a context's graph page drawn
live by a coordinator that runs inside rank 0."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request

import pytest
import torch

from distautograd import native
from distautograd.testing import start_cluster
from tests.helpers.processes import run_spawned

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HEARTBEAT_TIMEOUT = 3.0


def rendered(url: str) -> tuple:
    """The page's DOM after its script fetched the status (a virtual second or two), and chromium's log."""
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--v=0", "--virtual-time-budget=3000", "--dump-dom", url],
                            capture_output=True, text=True, timeout=120)
    return result.stdout, result.stderr


def states(dom: str) -> dict:
    """{worker: state} from the workers table as drawn."""
    rows = re.findall(r'<tr data-worker="([^"]+)">(.*?)</tr>', dom, re.S)
    return {name: re.search(r'<td class="(\w+) state">', row).group(1) for name, row in rows}


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (the README's test command installs it)")
def test_the_status_page_lists_the_workers_and_shows_a_killed_one_dead_within_the_heartbeat_timeout():
    cluster = start_cluster(2, coordinator_args=["--metrics-port", "0", "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT)])
    try:
        line = next(l for l in cluster.coordinator_process.output if "status page at" in l)
        url = re.search(r"(http://\S+/)", line).group(1)
        dom, log = rendered(url)
        assert states(dom) == {"worker1": "alive", "worker2": "alive"}, dom[-3000:]
        assert "Uncaught" not in log and "CONSOLE" not in log, log[-3000:]
        assert len(re.findall(rf"grpc</td><td>{native.message_path()}</td>", dom)) == 2, dom[-3000:]  # each one's path
        assert re.search(r'<table id="contexts">.*?<tbody><tr><td>none</td></tr></tbody>', dom, re.S)  # none open
        killed = time.monotonic()
        cluster.kill("worker2")
        while True:
            dom, log = rendered(url)
            if states(dom).get("worker2") == "dead":
                break
            assert time.monotonic() - killed < HEARTBEAT_TIMEOUT + 5, dom[-3000:]  # + one chromium start
        assert states(dom)["worker1"] == "alive"
        assert re.search(r"<td>worker2 \(rank \d\)</td><td>died</td>", dom), dom[-3000:]  # in the recent events
        assert "Uncaught" not in log and "CONSOLE" not in log, log[-3000:]
        with urllib.request.urlopen(url + "metrics", timeout=5) as answer:
            text = answer.read().decode()
        assert re.search(r'distautograd_departures_total\{how="died"\} 1\.0', text), text
        assert re.search(r'distautograd_members\{state="reachable"\} 1\.0', text), text
    finally:
        cluster.stop()


def _graph_from_rank_0(rank: int, world_size: int, port: int) -> None:
    import os

    from distautograd import autograd as dist_autograd
    from distautograd import rpc

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    options = rpc.TensorPipeRpcBackendOptions(metrics_port=0 if rank == 0 else None)
    rpc.init_rpc(f"w{rank}", rank=rank, world_size=world_size, rpc_backend_options=options)
    if rank == 0:
        from distautograd.runtime import current

        base = f"http://127.0.0.1:{current.get().http.port}"
        x = torch.randn(3, requires_grad=True)
        with dist_autograd.context() as context_id:
            y = rpc.rpc_sync("w1", torch.exp, args=(x,))
            dist_autograd.backward(context_id, [y.sum()], retain_graph=True)
            with urllib.request.urlopen(f"{base}/graph/{context_id}", timeout=30) as answer:
                page = answer.read().decode()
            assert "ExpBackward0" in page and ">w1</text>" in page, page[-2000:]
            with urllib.request.urlopen(f"{base}/status.json", timeout=5) as answer:
                assert b'"graphs": true' in answer.read()
    rpc.shutdown()


def test_a_coordinator_inside_rank_0_draws_an_open_contexts_graph_live():
    run_spawned(_graph_from_rank_0, nprocs=2)
