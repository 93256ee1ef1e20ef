"""Every path between workers, forced one at a time, and the fallbacks when a faster one is unavailable.

"auto" takes a Unix socket to peers on this host, with shared memory for big tensors; "tcp" the
plain TCP path; "grpc" the gRPC stream. Each must carry calls, 64 MiB tensors both ways, RRefs
and a backward pass, and shared segments must all come back to their owner.
"""

import shutil

import pytest

from distautograd import native
from distautograd.testing import start_cluster
from tests.helpers import processes

pytestmark = pytest.mark.slow


def run_driver(env: dict, *args: str) -> str:
    return processes.run_driver(*args, timeout=180, env=env).stdout


@pytest.mark.parametrize(
    "transport, shared, wire",
    [("auto", "1", "unix"), ("auto", "0", "unix"), ("tcp", "1", "tcp"), ("grpc", "1", "grpc")],
    ids=["unix+shared-memory", "unix-without-shared-memory", "tcp", "grpc"],
)
def test_each_path_carries_everything(transport, shared, wire):
    env = {"DISTAUTOGRAD_TRANSPORT": transport, "DISTAUTOGRAD_SHARED_MEMORY": shared}
    cluster = start_cluster(2, allowed_modules=["tests"], env=env)
    try:
        expected_shared = shared if wire == "unix" else "0"
        assert f"all calls over {wire}" in run_driver(env, "every_path_works", cluster.coordinator, wire, expected_shared)
    finally:
        cluster.stop()


def test_an_unreachable_unix_socket_falls_back_to_tcp(tmp_path):
    """As between containers on one machine: the socket paths the cluster advertises do not exist here
    (and, as between containers, the processes share a token: the world's own is handed out on those sockets)."""
    cluster = start_cluster(2, allowed_modules=["tests"], env={"TMPDIR": str(tmp_path)}, token="shared-secret")
    try:
        sockets = list(tmp_path.glob("distautograd-*/worker.sock"))
        assert len(sockets) == 3  # the coordinator's and the two workers'

        for path in sockets:
            shutil.rmtree(path.parent)
        out = run_driver({"DISTAUTOGRAD_TOKEN": "shared-secret"}, "every_path_works", cluster.coordinator, "tcp",
                         "either", "unix")
        assert "all calls over tcp" in out
    finally:
        cluster.stop()


@pytest.mark.skipif(not native.path_on(), reason="the compiled core is not built")
@pytest.mark.parametrize("python_side", ["workers", "driver"])
@pytest.mark.parametrize("transport, wire", [("auto", "unix"), ("tcp", "tcp")], ids=["unix", "tcp"])
def test_a_world_where_some_take_the_python_path_and_some_the_native_one(python_side, transport, wire):
    """A mixed world: the workers or the driver take the Python path (DISTAUTOGRAD_NATIVE_PATH=0), the
    others the compiled one (frames read, tensor lists coded by the core); calls, 64 MiB both ways, RRefs, shared memory and a
    bit-identical gradient all go through as in a world of one kind."""
    python = {"DISTAUTOGRAD_NATIVE_PATH": "0"}
    base = {"DISTAUTOGRAD_TRANSPORT": transport, "DISTAUTOGRAD_SHARED_MEMORY": "1"}
    cluster = start_cluster(2, allowed_modules=["tests"], env={**base, **(python if python_side == "workers" else {})})
    try:
        driver_env = {**base, **(python if python_side == "driver" else {})}
        out = run_driver(driver_env, "every_path_works", cluster.coordinator, wire, "1" if wire == "unix" else "0")
        assert f"all calls over {wire}" in out
    finally:
        cluster.stop()
