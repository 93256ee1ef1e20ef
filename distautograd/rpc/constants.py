"""torch.distributed.rpc.constants: the defaults programs and torch's tests name."""

from distautograd.runtime.options import DEFAULT_RPC_TIMEOUT, UNSET_TIMEOUT

DEFAULT_RPC_TIMEOUT_SEC = DEFAULT_RPC_TIMEOUT
DEFAULT_INIT_METHOD = "env://"
DEFAULT_SHUTDOWN_TIMEOUT = 100.0
DEFAULT_NUM_WORKER_THREADS = 16
UNSET_RPC_TIMEOUT = UNSET_TIMEOUT
