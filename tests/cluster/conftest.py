"""The session cluster (a coordinator and three CLI workers) this test process joins as 'trainer'."""

from __future__ import annotations

import pytest

from distautograd.testing import start_cluster


@pytest.fixture(scope="session")
def cluster():
    """A coordinator and workers worker1..worker3 as real processes; they may run tests.* functions."""
    c = start_cluster(3, allowed_modules=["tests"])
    yield c
    c.stop()


@pytest.fixture(scope="session")
def trainer(cluster):
    """This test process, joined to the session cluster as 'trainer'."""
    from distautograd import rpc

    rpc.init_rpc("trainer", rpc_backend_options=cluster.options(rpc_timeout=30))
    yield rpc.get_worker_info()
    rpc.shutdown(graceful=False)
