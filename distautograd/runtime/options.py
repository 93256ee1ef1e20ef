"""Backend options: every setting a process takes, from arguments first, then the environment, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import torch

from distautograd.encoding.allowlist import ALLOW_ENV
from distautograd.transport.security import Security, is_loopback

DEFAULT_RPC_TIMEOUT = 60.0
DEFAULT_MAX_MESSAGE = 4 << 30
UNSET_TIMEOUT = -1.0  # a call that names no timeout gets the default (torch's convention)
COORDINATOR_ENV = "DISTAUTOGRAD_COORDINATOR"

# Every environment variable this package reads, and what it sets.
ENVIRONMENT = {
    "DISTAUTOGRAD_COORDINATOR": "HOST:PORT of an external coordinator; then no rank hosts one",
    "DISTAUTOGRAD_NAME": "worker name (CLI worker; the launcher's role inside a cluster)",
    "DISTAUTOGRAD_HOST": "address to listen on",
    "DISTAUTOGRAD_PORT": "port to listen on (0 = any free port)",
    "DISTAUTOGRAD_ADVERTISE_HOST": "host others use to reach this process",
    "DISTAUTOGRAD_TOKEN": "shared token; required to listen beyond loopback",
    "DISTAUTOGRAD_TLS_CERT": "PEM certificate of this process",
    "DISTAUTOGRAD_TLS_KEY": "PEM private key of this process",
    "DISTAUTOGRAD_TLS_CA": "PEM CA of peers; on a server it makes TLS mutual",
    "DISTAUTOGRAD_TLS_SERVER_NAME": "name expected in server certificates",
    "DISTAUTOGRAD_ALLOW_MODULES": "comma-separated modules callers may name",
    "DISTAUTOGRAD_RPC_TIMEOUT": "default seconds per call (0 = none)",
    "DISTAUTOGRAD_THREADS": "threads running incoming calls",
    "DISTAUTOGRAD_HEARTBEAT_INTERVAL": "seconds between heartbeats",
    "DISTAUTOGRAD_HEARTBEAT_TIMEOUT": "seconds of silence before the coordinator declares a worker dead",
    "DISTAUTOGRAD_CONTEXT_TTL": "seconds a context outlives a creator that died",
    "DISTAUTOGRAD_LOG_LEVEL": "logging level of the CLI",
    "DISTAUTOGRAD_TRANSPORT": "how workers reach each other: auto (Unix socket, TCP, gRPC), tcp, or grpc",
    "DISTAUTOGRAD_SHARED_MEMORY": "0 to send big tensors through the socket instead of shared memory",
    "DISTAUTOGRAD_MAX_MESSAGE_BYTES": "the most bytes of tensors one message from a peer may carry",
    "DISTAUTOGRAD_METRICS_PORT": "serve Prometheus metrics (and, on the coordinator, its status page) on this port (0 = any free port; unset = off)",
    "DISTAUTOGRAD_UNREACHABLE_TIMEOUT": "seconds a worker may stay unreachable before it counts as dead",
    "DISTAUTOGRAD_PEER_CALLS": "requests one peer may have waiting or running here at once",
    "DISTAUTOGRAD_PEER_CONTEXTS": "autograd contexts one peer may bring here (open at once)",
    "DISTAUTOGRAD_PEER_RREFS": "RRefs one peer may hold to values this process owns",
    "DISTAUTOGRAD_PEER_BYTES": "bytes of tensors one peer's waiting and running requests may hold here",
    "DISTAUTOGRAD_WORKERS": "comma-separated worker names for the examples (distautograd.launch.workers)",
    "MASTER_ADDR": "host of the coordinator rank 0 hosts (as torch)",
    "MASTER_PORT": "port of the coordinator rank 0 hosts (as torch)",
    "RANK": "this process's rank (as torch)",
    "WORLD_SIZE": "number of processes (as torch)",
}


_TENSORPIPE_TRANSPORTS = frozenset({"shm", "uv", "ibv"})
_TENSORPIPE_CHANNELS = frozenset({"basic", "xth", "cma", "mpt_uv", "cuda_basic", "cuda_xth", "cuda_ipc", "cuda_gdr"})


def _is_cpu(value) -> bool:
    """A device as torch names one: "cpu", "cuda:0", or 0 (an accelerator's index)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return False
    try:
        return torch.device(value).type == "cpu"
    except RuntimeError:  # an accelerator this machine does not have
        return False


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_port(name: str) -> Optional[int]:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a port number (0 = any free port), got {value!r}") from None


class RpcBackendOptions:
    """What every backend's options have, as torch's base class: a default timeout and an init method.
    init_rpc takes BackendOptions (alias TensorPipeRpcBackendOptions), the one backend here."""

    def __init__(self, rpc_timeout: float = DEFAULT_RPC_TIMEOUT, init_method: str = "env://"):
        self.rpc_timeout = rpc_timeout
        self.init_method = init_method


@dataclass(kw_only=True)
class BackendOptions(RpcBackendOptions):
    """How this process joins and serves. Keyword-only, like torch's TensorPipeRpcBackendOptions.

    Args:
        num_worker_threads: threads that run incoming calls (torch's option of the same name).
        rpc_timeout: default timeout in seconds of every call; 0 means no limit.
        init_method: ``"env://"`` (MASTER_ADDR / MASTER_PORT), ``"tcp://host:port"`` or
            ``"file:///path"``, as in torch: rank 0 hosts the coordinator there, or publishes its
            address in the store a process group already keeps there. Unused if ``coordinator`` is set.
        coordinator: ``"host:port"`` of an external coordinator (env DISTAUTOGRAD_COORDINATOR);
            then no rank hosts one.
        host / port: where this worker listens (env DISTAUTOGRAD_HOST / DISTAUTOGRAD_PORT);
            loopback and a free port by default.
        advertise_host: the host others should use to reach this worker (env
            DISTAUTOGRAD_ADVERTISE_HOST); by default the listening address, or the address that
            routes to the coordinator when listening on all interfaces.
        token, tls_cert, tls_key, tls_ca, tls_server_name: see ``Security``; each also read from
            DISTAUTOGRAD_TOKEN, DISTAUTOGRAD_TLS_CERT, ...
        allowed_modules: modules whose functions and classes peers may name, beyond torch, the
            standard containers and ``__main__`` (env DISTAUTOGRAD_ALLOW_MODULES, comma-separated).
        init_timeout: seconds init_rpc waits for the whole world; defaults to rpc_timeout.
        heartbeat_interval / heartbeat_timeout: how often a worker reports to the coordinator, and how
            long a silent peer takes to be found unreachable (no heartbeat at the coordinator; a TCP
            connection that stops answering, through keepalive and TCP_USER_TIMEOUT). Unreachable is
            not dead: calls and passes that need it fail, nothing it holds is released.
        unreachable_timeout: the lease (env DISTAUTOGRAD_UNREACHABLE_TIMEOUT; 300 s): a worker that
            stays unreachable this long is dead, and everything it held and was held for it is
            released everywhere. Set on the process that hosts the coordinator.
        context_ttl: seconds a distributed autograd context outlives a creator that died.
        transport: how workers reach each other (env DISTAUTOGRAD_TRANSPORT): "auto" tries a Unix
            socket for peers on this host, then plain TCP, then the gRPC stream; "tcp" skips the
            Unix socket; "grpc" uses only gRPC streams. With TLS on, peers elsewhere use gRPC.
        shared_memory: on a Unix socket, send tensors of 1 MiB and more through shared memory (env
            DISTAUTOGRAD_SHARED_MEMORY=0 turns it off).
        max_message_bytes: the most bytes of tensors one message from a peer may carry (env
            DISTAUTOGRAD_MAX_MESSAGE_BYTES; 4 GiB). A peer reads one message at a time, so this is also
            what one peer can make this process hold; a bigger message gets RESOURCE_EXHAUSTED at once.
        peer_calls: requests one peer may have waiting or running here at once (env
            DISTAUTOGRAD_PEER_CALLS; 4096); one more is answered RESOURCE_EXHAUSTED naming the limit, and
            every other peer keeps its own share. All peers together: 4 times that.
        peer_rrefs: RRefs one peer may hold to values this process owns (env DISTAUTOGRAD_PEER_RREFS;
            65536): its remote() calls beyond that are refused RESOURCE_EXHAUSTED (forks it is handed
            by others count, and are never refused: they exist already).
        peer_bytes: bytes of tensors one peer's requests may hold here while they wait or run (env
            DISTAUTOGRAD_PEER_BYTES; 8 GiB; at least max_message_bytes).
        peer_contexts: distributed autograd contexts one peer may bring here, open at once (env
            DISTAUTOGRAD_PEER_CONTEXTS; 65536): a context counts against the peer whose message
            first named it here, and is freed when it is released.
        trust_program: whether peers may call this program's own modules (those loaded from the
            folder of its ``__main__``) without naming them in ``allowed_modules``. By default yes
            when rank 0 hosts the coordinator (every rank runs one program), no when joining an
            external coordinator (a cluster that serves other programs).
        device_maps, devices: accepted for torch compatibility; only CPU is supported.
        _transports, _channels: TensorPipe's, as torch's tests pass them: without "shm" among the
            transports peers on this host connect over TCP too (transport="tcp"); without a same-host
            channel ("cma", "xth") big tensors go through the connection (shared_memory=False). Names
            TensorPipe does not have, InfiniBand and CUDA channels are refused.
    """

    num_worker_threads: int = field(default_factory=lambda: _env_int("DISTAUTOGRAD_THREADS", 16))
    rpc_timeout: float = field(default_factory=lambda: _env_float("DISTAUTOGRAD_RPC_TIMEOUT", DEFAULT_RPC_TIMEOUT))
    init_method: Optional[str] = None
    coordinator: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    advertise_host: Optional[str] = None
    token: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    tls_server_name: Optional[str] = None
    allowed_modules: Sequence[str] = ()
    init_timeout: Optional[float] = None
    heartbeat_interval: float = field(default_factory=lambda: _env_float("DISTAUTOGRAD_HEARTBEAT_INTERVAL", 1.0))
    heartbeat_timeout: float = field(default_factory=lambda: _env_float("DISTAUTOGRAD_HEARTBEAT_TIMEOUT", 10.0))
    unreachable_timeout: float = field(default_factory=lambda: _env_float("DISTAUTOGRAD_UNREACHABLE_TIMEOUT", 300.0))
    context_ttl: float = field(default_factory=lambda: _env_float("DISTAUTOGRAD_CONTEXT_TTL", 30.0))
    transport: str = field(default_factory=lambda: os.environ.get("DISTAUTOGRAD_TRANSPORT", "auto"))
    shared_memory: bool = field(default_factory=lambda: os.environ.get("DISTAUTOGRAD_SHARED_MEMORY", "1") != "0")
    max_message_bytes: int = field(default_factory=lambda: _env_int("DISTAUTOGRAD_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE))
    peer_calls: int = field(default_factory=lambda: _env_int("DISTAUTOGRAD_PEER_CALLS", 4096))
    peer_contexts: int = field(default_factory=lambda: _env_int("DISTAUTOGRAD_PEER_CONTEXTS", 65536))
    peer_rrefs: int = field(default_factory=lambda: _env_int("DISTAUTOGRAD_PEER_RREFS", 65536))
    peer_bytes: int = field(default_factory=lambda: _env_int("DISTAUTOGRAD_PEER_BYTES", 8 << 30))
    metrics_port: Optional[int] = field(default_factory=lambda: _env_port("DISTAUTOGRAD_METRICS_PORT"))
    daemon: bool = False
    trust_program: Optional[bool] = None
    device_maps: Optional[Dict[Any, Any]] = None
    devices: Optional[Sequence[Any]] = None
    _transports: Optional[Sequence[str]] = field(default=None, repr=False)
    _channels: Optional[Sequence[str]] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("rpc_timeout", "num_worker_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"TensorPipeRpcBackendOptions(): incompatible constructor arguments: {name} must "
                                f"be a number (seconds for a timeout), got {type(value).__name__} {value!r}")
        if self.num_worker_threads < 1:
            raise ValueError(f"num_worker_threads must be at least 1, got {self.num_worker_threads}")
        if self.rpc_timeout < 0:
            raise ValueError(f"rpc_timeout must be >= 0 seconds (0 = no limit), got {self.rpc_timeout}")
        for name in ("max_message_bytes", "peer_calls", "peer_contexts", "peer_rrefs", "peer_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if self.peer_bytes < self.max_message_bytes:
            raise ValueError(f"peer_bytes ({self.peer_bytes}) must be at least max_message_bytes "
                             f"({self.max_message_bytes}): one message that fits must fit a peer's share")
        if self.metrics_port is not None and (isinstance(self.metrics_port, bool) or not isinstance(
                self.metrics_port, int) or not 0 <= self.metrics_port <= 65535):
            raise ValueError(f"metrics_port must be a port number (0 = any free port), got {self.metrics_port!r}")
        if self.transport not in ("auto", "tcp", "grpc"):
            raise ValueError(f"transport must be 'auto', 'tcp' or 'grpc', got {self.transport!r}")
        self._apply_tensorpipe_choices()
        for worker, mapping in (self.device_maps or {}).items():
            self.set_device_map(worker, mapping)
        self.set_devices(self.devices or [])

    def _apply_tensorpipe_choices(self) -> None:
        if self._transports is not None:
            names = set(self._transports)
            unknown = names - _TENSORPIPE_TRANSPORTS
            if unknown or not names:
                raise ValueError(f"_transports must name some of {sorted(_TENSORPIPE_TRANSPORTS)} (TensorPipe's), "
                                 f"got {list(self._transports)}")
            if "ibv" in names:
                raise ValueError("the 'ibv' (InfiniBand) transport is not supported; use 'shm' and 'uv'")
            if "shm" not in names:
                self.transport = "tcp"  # no same-host path: peers here connect over TCP as well
        if self._channels is not None:
            names = set(self._channels)
            unknown = names - _TENSORPIPE_CHANNELS
            if unknown or not names:
                raise ValueError(f"_channels must name some of {sorted(_TENSORPIPE_CHANNELS)} (TensorPipe's), "
                                 f"got {list(self._channels)}")
            if any(name.startswith("cuda") for name in names):
                raise ValueError(f"CUDA channels {sorted(n for n in names if n.startswith('cuda'))} are not "
                                 "supported: distautograd moves CPU tensors only")
            if not names & {"cma", "xth"}:
                self.shared_memory = False  # no same-host channel: tensors go through the connection

    def set_device_map(self, to: str, device_map: Dict[Any, Any]) -> None:
        """As torch's: which of this worker's devices map to which of ``to``'s. Only CPU to CPU is
        possible here (distautograd moves CPU tensors), so that is all this accepts; it changes nothing."""
        for source, target in dict(device_map).items():
            if not (_is_cpu(source) and _is_cpu(target)):
                raise ValueError(f"device map {source!r} -> {target!r} for {to!r}: only CPU devices are supported, "
                                 "distautograd moves CPU tensors")
        if self.device_maps is None:
            self.device_maps = {}
        self.device_maps[to] = dict(device_map)

    def set_devices(self, devices) -> None:
        for device in devices:
            if not _is_cpu(device):
                raise ValueError(f"device {device!r} is not supported: distautograd moves CPU tensors only")
        self.devices = list(devices)

    def security(self) -> Security:
        return Security.from_env(
            token=self.token,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            tls_ca=self.tls_ca,
            tls_server_name=self.tls_server_name,
        )

    def trusts_program(self) -> bool:
        if self.trust_program is not None:
            return self.trust_program
        return not (self.coordinator or os.environ.get(COORDINATOR_ENV))

    def all_allowed_modules(self) -> list:
        from_env = [m for m in os.environ.get(ALLOW_ENV, "").split(",") if m.strip()]
        return [*self.allowed_modules, *from_env]

    def listen_host(self, coordinator_host: str) -> str:
        host = self.host or os.environ.get("DISTAUTOGRAD_HOST")
        if host:
            return host
        return "127.0.0.1" if is_loopback(coordinator_host) else "0.0.0.0"

    def listen_port(self) -> int:
        if self.port is not None:
            return self.port
        return int(os.environ.get("DISTAUTOGRAD_PORT", "0"))

    def call_timeout(self, timeout: Optional[float] = None) -> Optional[float]:
        """A call's timeout in seconds: unset means the default, 0 means none (None)."""
        if timeout is None or timeout == UNSET_TIMEOUT:
            timeout = self.rpc_timeout
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds (0 = no limit), got {timeout}")
        return timeout or None

    def effective_init_timeout(self) -> float:
        return self.init_timeout if self.init_timeout is not None else (self.rpc_timeout or DEFAULT_RPC_TIMEOUT)


# torch.distributed.rpc names, so existing programs only change their imports.
TensorPipeRpcBackendOptions = BackendOptions
