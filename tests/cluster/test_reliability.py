"""When things go away: the coordinator restarts, workers are killed, socket folders are left behind."""

import os
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distautograd.testing import Process, start_cluster
from distautograd.transport import sockets
from tests.helpers.processes import child_env, free_port, poll_for, run_driver


def health(address: str) -> str:
    try:
        with grpc.insecure_channel(address) as chan:
            reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as exc:
        return exc.code().name


def test_workers_join_a_restarted_coordinator_again_and_say_not_serving_meanwhile():
    port = free_port()
    cluster = start_cluster(2, allowed_modules=["tests"], coordinator_args=["--port", str(port)])
    restarted = None
    try:
        workers = cluster.workers
        cluster.coordinator_process.signal(signal.SIGKILL)
        cluster.coordinator_process.popen.wait(10)
        for worker in workers:
            assert poll_for(lambda: health(worker.address) == "NOT_SERVING", timeout=10), worker.name
        restarted = Process([sys.executable, "-m", "distautograd.cli", "coordinator", "--host", "127.0.0.1",
                             "--port", str(port)], child_env(), "restarted coordinator")
        restarted.wait_ready(30)
        for worker in workers:
            assert poll_for(lambda: health(worker.address) == "SERVING", timeout=15), worker.name
        out = run_driver("calls_every_worker", cluster.coordinator, "newcomer", *(w.name for w in workers)).stdout
        ranks = dict(pair.split("=") for pair in out.split("OK ", 1)[1].split())
        assert {w.name: int(ranks[w.name]) for w in workers} == {w.name: w.rank for w in workers}  # same ranks
    finally:
        if restarted is not None:
            restarted.stop()
        cluster.stop()


def test_a_killed_workers_rank_goes_to_nobody_else_but_its_name_gets_it_back():
    cluster = start_cluster(2, allowed_modules=["tests"])
    try:
        victim = cluster.worker("worker2")
        cluster.kill("worker2")
        assert poll_for(lambda: "worker2" in cluster.coordinator_process.tail() and "failed" in
                        cluster.coordinator_process.tail(), timeout=10)
        out = run_driver("calls_every_worker", cluster.coordinator, "stranger", "worker1").stdout
        assert f"stranger={victim.rank}" not in out, out
        back = Process([sys.executable, "-m", "distautograd.cli", "worker", "--name", "worker2", "--coordinator",
                        cluster.coordinator, "--allow-module", "tests"], child_env(), "worker2 again")
        try:
            assert int(back.wait_ready(30).group("rank")) == victim.rank
        finally:
            back.stop()
    finally:
        cluster.stop()


def test_socket_folders_of_killed_processes_are_swept(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cluster = start_cluster(1, env={"TMPDIR": str(tmp_path)})
    try:
        pid = cluster.workers[0].process.pid
        mine = [p for p in tmp_path.iterdir() if p.name.startswith(f"distautograd-{pid}-")]
        assert len(mine) == 1
        cluster.kill("worker1")
        assert mine[0].exists()  # SIGKILL: nothing cleaned up
        removed = sockets.sweep_stale_socket_dirs()
        assert str(mine[0]) in removed and not mine[0].exists()
        assert any(p.name.startswith(f"distautograd-{cluster.coordinator_process.pid}-") for p in tmp_path.iterdir())
    finally:
        cluster.stop()
        os.environ.pop("TMPDIR", None)
