"""The pytest plugin: ``local_cluster`` starts a coordinator and workers as real processes and reaps them after the test.

Example::

    @pytest.mark.local_cluster(workers=2, allowed_modules=["mymodels"])
    def test_add(local_cluster):
        rpc.init_rpc("trainer", rpc_backend_options=local_cluster.options())
        try:
            assert rpc.rpc_sync(local_cluster.workers[0].name, torch.add, args=(1, 2)) == 3
        finally:
            rpc.shutdown()
"""

from __future__ import annotations

import pytest

from distautograd.testing import start_cluster


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "local_cluster(workers=2, **kwargs): how the local_cluster fixture starts its cluster"
    )


@pytest.fixture
def local_cluster(request):
    """A coordinator and workers (2 unless ``@pytest.mark.local_cluster(workers=N, ...)`` says otherwise)."""
    marker = request.node.get_closest_marker("local_cluster")
    kwargs = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        kwargs.setdefault("workers", marker.args[0])
    cluster = start_cluster(**kwargs)
    try:
        yield cluster
    finally:
        cluster.stop()
