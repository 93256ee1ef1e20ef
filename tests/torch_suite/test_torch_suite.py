"""torch's own RPC, distributed autograd and distributed optimizer tests, from the installed wheel, run on distautograd.

The test bodies are torch's, unmodified: the shim maps torch.distributed.rpc, .autograd, .optim
and RemoteModule to this package, torch's generate_tests mixes each suite with the fixture (the
part torch's tests leave to each agent), and torch's MultiProcessTestCase runs every test in four
fresh processes. A newer torch brings its new tests with it. exclusions.py lists what is not run.
"""

from __future__ import annotations

import os
import unittest

# torch's own bound per test is 300 s; ours is a fifth of it: a test that takes longer hangs.
os.environ.setdefault("DISTRIBUTED_TESTS_DEFAULT_TIMEOUT", "60")

from tests.torch_suite import shim  # noqa: E402

shim.install()

from torch.testing._internal.distributed.rpc import dist_autograd_test, dist_optimizer_test, rpc_test  # noqa: E402
from torch.testing._internal.distributed.rpc.examples.parameter_server_test import ParameterServerTest  # noqa: E402
from torch.testing._internal.distributed.rpc.examples.reinforcement_learning_rpc_test import (  # noqa: E402
    ReinforcementLearningRpcTest,
)
from torch.testing._internal.distributed.rpc.rpc_agent_test_fixture import RpcAgentTestFixture  # noqa: E402
from torch.testing._internal.distributed.rpc_utils import generate_tests  # noqa: E402

from tests.torch_suite import exclusions  # noqa: E402
from tests.torch_suite.fixture import DistautogradFixture  # noqa: E402

# Every test class of the three files, but those exclusions.CLASSES names; and the two examples
# torch runs beside them.
SUITES = [
    cls for module in (rpc_test, dist_autograd_test, dist_optimizer_test) for name, cls in vars(module).items()
    if isinstance(cls, type) and issubclass(cls, RpcAgentTestFixture) and cls.__module__ == module.__name__
    and any(attr.startswith("test_") for attr in vars(cls)) and name not in exclusions.CLASSES
] + [ParameterServerTest, ReinforcementLearningRpcTest]

_generated = generate_tests("Distautograd", DistautogradFixture, SUITES, __name__)
for _cls in _generated.values():
    for _name, _reason in exclusions.TESTS.items():
        if hasattr(_cls, _name):
            setattr(_cls, _name, unittest.skip(_reason)(getattr(_cls, _name)))
globals().update(_generated)
del _cls, _name, _reason  # not test classes of their own
