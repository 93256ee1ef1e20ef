"""A real Prometheus (Debian's package) scrapes a cluster while it trains, with the deployment's token
as its bearer token, and its HTTP API answers for a counter that grew and a latency quantile."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from distautograd.runtime.rendezvous import free_port
from distautograd.testing import start_cluster
from tests.helpers.processes import run_python

pytestmark = pytest.mark.slow
PROMETHEUS = shutil.which("prometheus")
ROOT = Path(__file__).resolve().parents[2]

TRAIN = """
import sys, time, torch
from distautograd import autograd as dist_autograd, rpc
rpc.init_rpc("trainer", rpc_backend_options=rpc.TensorPipeRpcBackendOptions(
    coordinator=sys.argv[1], token=sys.argv[2], rpc_timeout=30, metrics_port=int(sys.argv[4])))
w = torch.randn(8, 8, requires_grad=True)
end = time.monotonic() + float(sys.argv[3])
steps = 0
while time.monotonic() < end:
    with dist_autograd.context() as context_id:
        y = rpc.rpc_sync("worker1", torch.mm, args=(w, w))
        z = rpc.rpc_sync("worker2", torch.tanh, args=(y,))
        dist_autograd.backward(context_id, [z.sum()])
    steps += 1
    time.sleep(0.02)
print("steps", steps)
rpc.shutdown()
"""


def query(base: str, promql: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as answer:
        data = json.load(answer)
    assert data["status"] == "success", data
    return data["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus (the README's test command installs it)")
def test_prometheus_scrapes_a_training_cluster_with_the_token_and_answers_for_counters_and_quantiles(tmp_path):
    token = secrets.token_hex(16)
    metrics = ["--metrics-port", "0", "--host", "0.0.0.0"]  # beyond loopback: the port needs the token
    cluster = start_cluster(2, token=token, coordinator_args=metrics, worker_args=metrics + ["--advertise-host",
                                                                                              "127.0.0.1"])
    prometheus = None
    try:
        targets = []
        for process in [cluster.coordinator_process] + [w.process for w in cluster.workers]:
            deadline = time.monotonic() + 10
            while not any("metrics at http://" in line for line in process.output):
                assert time.monotonic() < deadline, process.tail()
                time.sleep(0.05)
            line = next(l for l in process.output if "metrics at http://" in l)
            assert "bearer token required" in line
            port = re.search(r"metrics at http://[^:]+:(\d+)/", line).group(1)
            targets.append(f"127.0.0.1:{port}")
        trainer_port = free_port()  # the trainer listens on loopback: its port needs no token (it gets it anyway)
        targets.append(f"127.0.0.1:{trainer_port}")
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "distautograd", "authorization": {"type": "Bearer", "credentials": token},
                                "static_configs": [{"targets": targets}]}],
        }))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        prometheus = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                       f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert prometheus.poll() is None and time.monotonic() < deadline, "prometheus did not start"
            time.sleep(0.2)
        trained = run_python(TRAIN.replace("sys.argv[1]", repr(cluster.coordinator)).replace(
            "sys.argv[2]", repr(token)).replace("float(sys.argv[3])", "8.0").replace("int(sys.argv[4])", str(trainer_port)),
            timeout=120)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        time.sleep(3)  # the last scrapes
        up = query(base, "max_over_time(up[1m])")  # the trainer has left by now; it was up while it trained
        assert sorted(r["metric"]["instance"] for r in up if r["value"][1] == "1") == sorted(targets), up
        served = query(base, 'sum(increase(distautograd_calls_served_total{function="aten::mm",outcome="ok"}[1m]))')
        assert served and float(served[0]["value"][1]) > 10, served
        received = {r["metric"]["transport"]: float(r["value"][1])
                    for r in query(base, "sum by (transport) (distautograd_received_bytes_total)")}
        assert received.get("unix", 0) > 10_000, received  # the trainer's calls, on this host's sockets
        quantile = query(base, "histogram_quantile(0.9, sum by (le) (rate("
                               "distautograd_call_serve_duration_seconds_bucket[1m])))")
        assert quantile and 0 < float(quantile[0]["value"][1]) < 5, quantile
        members = query(base, 'distautograd_members{state="reachable"}')
        assert [float(r["value"][1]) for r in members] == [2.0], members  # the trainer left; the workers stay
        dashboard = json.loads((ROOT / "deploy" / "grafana" / "distautograd.json").read_text())
        answered = {t["expr"]: query(base, t["expr"]) for p in dashboard["panels"] for t in p["targets"]}
        assert len(answered) >= 10  # every query of the Grafana dashboard is valid PromQL on these metrics
        calls = answered["sum by (function, outcome) (rate(distautograd_calls_made_total[1m]))"]
        assert {(r["metric"]["function"], r["metric"]["outcome"]) for r in calls} >= {("aten::mm", "ok"),
                                                                                        ("aten::tanh", "ok")}, calls
        passes = query(base, "sum(increase(distautograd_backward_passes_started_total[1m]))")
        assert passes and float(passes[0]["value"][1]) > 10, passes
        assert answered["sum by (transport) (rate(distautograd_sent_bytes_total[1m]))"]
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(10)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait(10)
        cluster.stop()
