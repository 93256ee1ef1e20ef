"""The agent-specific part of torch's RPC tests (what TensorPipe's fixture is for TensorPipe), for distautograd."""

from __future__ import annotations

import torch.multiprocessing
from torch.testing._internal.distributed.rpc.rpc_agent_test_fixture import RpcAgentTestFixture

from distautograd import rpc

# Each test's ranks fork from one server that has imported torch, distautograd and torch's test
# modules once: spawning four fresh interpreters per test (torch's way) costs ~15 s of CPU a test.
_context = torch.multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["tests.torch_suite.test_torch_suite"])


class DistautogradFixture(RpcAgentTestFixture):
    @property
    def rpc_backend(self):
        return rpc.BackendType.TENSORPIPE

    @property
    def rpc_backend_options(self):
        # The deployment names the modules whose functions peers may call: here, torch's tests.
        return rpc.TensorPipeRpcBackendOptions(init_method=self.init_method,
                                               allowed_modules=["torch.testing._internal", "tests.torch_suite"])

    def get_shutdown_error_regex(self):
        return ".*"

    def get_timeout_error_regex(self):
        return "RPC ran for more than"

    def _spawn_processes(self) -> None:
        self._start_processes(_context.Process)
