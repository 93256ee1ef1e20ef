"""The oracle tests of this tier (gradients bit for bit, every node once, unused sends, faults naming
the worker) run on both message paths: the compiled one (the core reads frames and codes tensor
lists) and the Python path it replaces (DISTAUTOGRAD_NATIVE_PATH=0). The rest of the tier runs on the default, the compiled one."""

from __future__ import annotations

import pytest

from distautograd import native
from tests.helpers.paths import take_path

BOTH_PATHS = {"test_backward", "test_backward_failures", "test_big_graph", "test_backward_races"}


def pytest_generate_tests(metafunc) -> None:
    if "frames" in metafunc.fixturenames:
        both = native.core is not None and metafunc.module.__name__.rsplit(".", 1)[-1] in BOTH_PATHS
        metafunc.parametrize("frames", ["native", "python"] if both else ["default"], indirect=True)


@pytest.fixture(autouse=True)
def frames(request, monkeypatch):
    """Which path this test's agents' messages take."""
    if request.param == "python":
        take_path(monkeypatch, "0")
    return request.param
