"""``path``: a test run once on each message path where the core is built (the compiled one and the Python
one it replaces); modules whose every test should, mark themselves ``usefixtures("path")``."""

import pytest

from distautograd import native
from tests.helpers.paths import take_path

PATHS = ["native", "python"] if native.core is not None else ["python"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    take_path(monkeypatch, "1" if request.param == "native" else "0")
    return request.param
