"""Safe by default: no code runs from a pickle, no call runs without the token, TLS and mutual TLS work."""

import os
import shutil
import subprocess
import sys

import grpc
import pytest
import torch

from distautograd import rpc
from distautograd.errors import PermissionDenied
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.testing import start_cluster
from tests.helpers import remote, wire_client
from tests.helpers.payloads import nested_deques
from tests.helpers.processes import run_driver


class WritesMarker:
    """An argument whose pickle reduces to os.system: unpickling it would run a shell command."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.usefixtures("trainer")
def test_a_function_reference_to_os_system_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(PermissionDenied) as err:
        rpc.rpc_sync("worker1", os.system, args=(f"touch {marker}",))
    assert "posix.system" in str(err.value) and "--allow-module" in str(err.value)
    assert not marker.exists()
    assert rpc.rpc_sync("worker1", remote.add, args=(1, 1)) == 2  # still serving


@pytest.mark.usefixtures("trainer")
def test_an_argument_that_reduces_to_os_system_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(PermissionDenied, match="posix.system"):
        rpc.rpc_sync("worker2", remote.echo, args=(WritesMarker(marker),))
    with pytest.raises(PermissionDenied, match="posix.system"):
        rpc.remote("worker2", remote.echo, args=(WritesMarker(marker),)).to_here()
    assert not marker.exists()
    assert rpc.rpc_sync("worker2", remote.add, args=(1, 1)) == 2


@pytest.mark.usefixtures("trainer")
def test_a_result_that_reduces_to_os_system_is_refused_by_the_caller(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(PermissionDenied, match="posix.system"):
        rpc.rpc_sync("worker1", remote.return_shell_payload, args=(str(marker),))
    assert not marker.exists()


def test_modules_outside_the_allowlist_cannot_be_called(cluster, tmp_path):
    """worker1 allows 'tests'; a raw call naming a function elsewhere is refused before import."""
    response = wire_client.call(cluster.worker("worker1").address, subprocess.call, ["true"], token=cluster.client_token())
    assert response.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "subprocess.call" in response.error.message


@pytest.fixture(scope="module")
def token_cluster():
    c = start_cluster(1, allowed_modules=["tests"], token="s3cret-token")
    yield c
    c.stop()


def test_calls_without_the_token_get_unauthenticated_and_nothing_runs(token_cluster, tmp_path):
    address = token_cluster.workers[0].address
    marker = tmp_path / "ran"
    for token in (None, "wrong"):
        with pytest.raises(grpc.RpcError) as err:
            wire_client.call(address, remote.touch, str(marker), token=token)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token" in err.value.details()
    assert not marker.exists()
    # the same call with the token runs: the test above can fail
    response = wire_client.call(address, remote.touch, str(marker), token="s3cret-token")
    assert not response.HasField("error") and marker.exists()


def test_joining_with_a_wrong_token_is_refused(token_cluster):
    run_driver("wrong_token_is_refused", token_cluster.coordinator, token_cluster.workers[0].name)
    run_driver("right_token_works", token_cluster.coordinator, "s3cret-token")


def test_health_checks_stay_open_for_probes(token_cluster):
    from distautograd.cli import main

    assert main(["health", token_cluster.coordinator]) == 0


@pytest.mark.parametrize("role", ["coordinator", "worker"])
def test_listening_beyond_loopback_needs_a_token(role):
    argv = [sys.executable, "-m", "distautograd.cli", role, "--host", "0.0.0.0", "--port", "0"]
    if role == "worker":
        argv += ["--name", "w", "--coordinator", "127.0.0.1:1"]
    env = {k: v for k, v in os.environ.items() if k != "DISTAUTOGRAD_TOKEN"}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a shared token" in result.stderr


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=test-ca", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=localhost",
            cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            "node.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return {name: str(d / name) for name in ("ca.pem", "node.pem", "node.key")}


@pytest.mark.skipif(not os.path.exists("/usr/bin/openssl"), reason="needs the openssl command to make certificates")
def test_mutual_tls_cluster(certificates):
    tls = ["--tls-cert", certificates["node.pem"], "--tls-key", certificates["node.key"], "--tls-ca",
           certificates["ca.pem"], "--tls-server-name", "localhost"]
    cluster = start_cluster(2, allowed_modules=["tests"], coordinator_args=tls, worker_args=tls)
    try:
        run_driver("tls_cluster", cluster.coordinator, certificates["node.pem"], certificates["node.key"],
                   certificates["ca.pem"])
        run_driver("tls_cluster", cluster.coordinator, certificates["node.pem"], certificates["node.key"],
                   certificates["ca.pem"], "grpc", env={"DISTAUTOGRAD_TRANSPORT": "tcp"})  # TCP is never plain text
        address = cluster.workers[0].address
        with open(certificates["ca.pem"], "rb") as f:
            ca = f.read()
        with pytest.raises(grpc.RpcError) as err:  # TLS, but no client certificate
            wire_client.call(address, remote.add, 1, 2, credentials=grpc.ssl_channel_credentials(ca))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):  # plaintext
            wire_client.call(address, remote.add, 1, 2)
    finally:
        cluster.stop()


@pytest.mark.skipif(not os.path.exists("/usr/bin/openssl"), reason="needs the openssl command to make certificates")
def test_server_only_tls_cluster(certificates):
    """No CA on the servers: TLS without client certificates. Clients check servers against the system's
    roots, here the test CA (gRPC's GRPC_DEFAULT_SSL_ROOTS_FILE_PATH)."""
    tls = ["--tls-cert", certificates["node.pem"], "--tls-key", certificates["node.key"], "--tls-server-name",
           "localhost"]
    env = {"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": certificates["ca.pem"]}
    cluster = start_cluster(2, allowed_modules=["tests"], coordinator_args=tls, worker_args=tls, env=env,
                            token="server-only-tls-token")
    try:
        out = run_driver("tls_cluster", cluster.coordinator, certificates["node.pem"], certificates["node.key"], "",
                         env=dict(env, DISTAUTOGRAD_TOKEN="server-only-tls-token")).stdout
        assert "server-only TLS" in out
        address = cluster.workers[0].address
        with open(certificates["ca.pem"], "rb") as f:
            ca = f.read()
        response = wire_client.call(address, remote.add, 1, 2, token="server-only-tls-token",
                                    credentials=grpc.ssl_channel_credentials(ca))  # no client certificate: fine
        assert not response.HasField("error"), response.error
        with pytest.raises(grpc.RpcError):  # plaintext
            wire_client.call(address, remote.add, 1, 2, token="server-only-tls-token")
    finally:
        cluster.stop()


INTRUDER = r'''
import socket, sys, grpc
from distautograd import rpc
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.transport import sockets
from tests.helpers import remote, wire_client
from tests.helpers.payloads import nested_deques

coordinator, worker_grpc, worker_tcp, marker = sys.argv[1:5]
outcomes = []
try:
    rpc.init_rpc("intruder", rpc_backend_options=rpc.BackendOptions(coordinator=coordinator, init_timeout=5))
    outcomes.append("JOINED")
except Exception as exc:
    outcomes.append(f"join refused: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
try:
    wire_client.call(worker_grpc, remote.touch, marker)
    outcomes.append("CALLED over gRPC")
except grpc.RpcError as exc:
    outcomes.append(f"grpc refused: {exc.code().name}")
host, _, port = worker_tcp.rpartition(":")
try:
    sockets.connect(worker_tcp, False, pb.Hello(name="intruder", rank=99))
    outcomes.append("CONNECTED over TCP")
except Exception as exc:
    outcomes.append(f"tcp refused: {type(exc).__name__}")
print("\n".join(outcomes))
'''


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to be another user")
def test_another_os_user_cannot_join_or_call_a_world_without_a_token(cluster, trainer, tmp_path):
    """The embedded default (loopback, no token configured): the world's token goes only to processes of
    the same user, so a process of another user (here `nobody`) gets in nowhere, and nothing runs."""
    from distautograd.runtime.current import get as current_agent

    tmp_path.chmod(0o777)
    marker = tmp_path / "ran"
    worker = current_agent().world.entry(rpc.get_worker_info("worker1").id)
    result = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c", INTRUDER,
         cluster.coordinator, worker.address, worker.socket_address, str(marker)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=os.getcwd(), HOME=str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr
    assert "join refused" in result.stdout and "UNAUTHENTICATED" in result.stdout
    assert "grpc refused: UNAUTHENTICATED" in result.stdout
    assert "tcp refused" in result.stdout
    assert "JOINED" not in result.stdout and "CALLED" not in result.stdout and "CONNECTED" not in result.stdout
    assert not marker.exists()
    assert rpc.rpc_sync("worker1", remote.add, args=(1, 1)) == 2  # the world goes on serving its own user


def test_the_unix_sockets_live_in_directories_only_their_user_can_enter(trainer):
    from distautograd.runtime.current import get as current_agent

    path = current_agent().listener.unix_path
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700


@pytest.mark.usefixtures("trainer")
class TestWhatAConnectedCallerCannotReach:
    """The review's attacks, as a caller holding the world's token would make them: nothing escapes."""

    def test_proxy_chains_cannot_reach_storages_or_files(self, tmp_path):
        secret = tmp_path / "secret"
        secret.write_bytes(b"root only")
        zeros = rpc.remote("worker1", torch.zeros, args=(1,))
        with pytest.raises(PermissionDenied, match="untyped_storage"):
            zeros.remote().untyped_storage().to_here()
        with pytest.raises(PermissionDenied, match="numpy"):
            zeros.rpc_sync().numpy()
        with pytest.raises(PermissionDenied):
            rpc.rpc_sync("worker1", torch.from_file, args=(str(secret), False, 9))
        assert rpc.rpc_sync("worker1", remote.add, args=(1, 1)) == 2

    def test_file_writers_and_process_settings_are_refused(self, tmp_path):
        target = tmp_path / "kept"
        target.write_text("data")
        with pytest.raises(PermissionDenied):
            rpc.rpc_sync("worker1", torch.PyTorchFileWriter, args=(str(target),))
        with pytest.raises(PermissionDenied):
            rpc.rpc_sync("worker1", torch.set_num_threads, args=(1,))
        with pytest.raises(PermissionDenied):
            rpc.rpc_sync("worker1", torch.import_ir_module, args=(None, str(target), None, {}))
        assert target.read_text() == "data"

    def test_a_module_planted_in_torchs_folder_is_never_imported(self, tmp_path):
        """With a way to write files, naming a planted torch.* module in a pickle used to run it."""
        marker = tmp_path / "ran"
        planted = os.path.join(os.path.dirname(torch.__file__), "distautograd_planted_by_a_test.py")
        with open(planted, "w") as f:
            f.write(f"open({str(marker)!r}, 'w').close()\ndef f(*args):\n    return 1\n")
        try:
            payload = pb.Frame(id=1, request=pb.Request(call=pb.Call(function=pb.Value(
                pickle=b"\x80\x04ctorch.distautograd_planted_by_a_test\nf\n)}\x87."))))
            from tests.helpers.wire_client import unary

            token = rpc_token()
            reply = pb.Frame.FromString(unary(rpc_address("worker1"), payload.SerializeToString(), token)).response
            assert reply.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0], reply
            assert "not loaded here" in reply.error.message
        finally:
            os.remove(planted)
        assert not marker.exists()

    def test_a_nesting_bomb_is_refused_and_the_worker_lives(self):
        payload = pb.Frame(id=1, request=pb.Request(call=pb.Call(function=pb.Value(pickle=nested_deques(300_000)))))
        from tests.helpers.wire_client import unary

        reply = pb.Frame.FromString(unary(rpc_address("worker2"), payload.SerializeToString(), rpc_token(),
                                          timeout=60)).response
        assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "nests deeper" in reply.error.message
        assert rpc.rpc_sync("worker2", remote.add, args=(1, 1)) == 2


def rpc_address(name: str) -> str:
    from distautograd.runtime.current import get as current_agent

    return current_agent().world.entry(rpc.get_worker_info(name).id).address


def rpc_token() -> str:
    from distautograd.runtime.current import get as current_agent

    return current_agent().security.token
