"""BackendOptions as torch's tests pass them: TensorPipe's transport and channel choices mean what they say here."""

import pytest

from distautograd.runtime.options import BackendOptions


def test_without_shm_among_the_transports_peers_on_one_host_talk_tcp():
    assert BackendOptions(_transports=["uv"]).transport == "tcp"
    assert BackendOptions(_transports=["shm", "uv"]).transport == "auto"
    assert BackendOptions(_transports=["shm", "uv"], transport="grpc").transport == "grpc"


def test_without_a_same_host_channel_tensors_go_through_the_connection():
    assert BackendOptions(_channels=["basic"]).shared_memory is False
    assert BackendOptions(_channels=["basic", "cma"]).shared_memory is True
    assert BackendOptions(_channels=["xth"]).shared_memory is True


@pytest.mark.parametrize("options, says", [
    (dict(_transports=["ibv", "uv"]), "InfiniBand"),
    (dict(_transports=["carrier-pigeon"]), "TensorPipe's"),
    (dict(_transports=[]), "TensorPipe's"),
    (dict(_channels=["cuda_ipc", "basic"]), "CUDA channels"),
    (dict(_channels=["telepathy"]), "TensorPipe's"),
])
def test_what_cannot_be_honoured_is_refused(options, says):
    with pytest.raises(ValueError, match=says):
        BackendOptions(**options)
