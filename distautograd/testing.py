"""Real clusters on this machine for tests and tools: a coordinator and workers as processes, reaped whatever happens.

Every process binds a free port and reports "... ready at ADDRESS" before the caller goes on;
all of them are stopped (SIGTERM, then SIGKILL) by ``Cluster.stop``, and any left at exit are
killed. ``distautograd.pytest_plugin`` offers this as the ``local_cluster`` fixture.

Example::

    cluster = start_cluster(2)
    try:
        rpc.init_rpc("trainer", rpc_backend_options=cluster.options())
        ...
    finally:
        cluster.stop()
"""

from __future__ import annotations

import atexit
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

from distautograd.runtime.options import BackendOptions
from distautograd.transport import grpc_server, paths
from distautograd.transport.security import Security

_READY = re.compile(r"(?:coordinator|worker (?P<name>\S+)) ready at (?P<address>\S+)(?: \(rank (?P<rank>\d+)\))?")
_live: List["Process"] = []


class Process:
    """A child process whose output is watched for its ready line and kept for error messages."""

    def __init__(self, argv: Sequence[str], env: Dict[str, str], label: str):
        self.label = label
        self.popen = subprocess.Popen(
            list(argv),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, so a kill reaches its children too
        )
        self.output: List[str] = []
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._read, name=f"output-{label}", daemon=True).start()
        _live.append(self)

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float) -> re.Match:
        end = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.label} did not report ready within {timeout:g} s:\n{self.tail()}") from None
            if line is None:
                raise RuntimeError(f"{self.label} exited with {self.popen.wait()} before it was ready:\n{self.tail()}")
            match = _READY.search(line)
            if match:
                return match

    def tail(self, lines: int = 40) -> str:
        return "".join(self.output[-lines:])

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 5.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps. Returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            code = self.popen.wait(10)
        if self in _live:
            _live.remove(self)
        return code


def run_together(
    commands: Sequence[Sequence[str]], timeout: float, envs: Optional[Sequence[Dict[str, str]]] = None, **popen
) -> List[subprocess.CompletedProcess]:
    """Starts every command at once and waits for them all; whatever still runs when the time is
    up or something fails is killed and reaped. ``popen`` goes to every ``subprocess.Popen``."""
    procs: List[subprocess.Popen] = []
    try:
        for index, command in enumerate(commands):
            env = envs[index] if envs is not None else popen.get("env")
            procs.append(subprocess.Popen(list(command), **dict(popen, env=env)))
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


@atexit.register
def _reap_everything() -> None:
    for process in list(_live):
        process.signal(signal.SIGKILL)
        try:
            process.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class WorkerHandle:
    name: str
    address: str
    rank: int
    process: Process


@dataclass
class Cluster:
    """A coordinator and workers running as separate processes on this machine."""

    coordinator: str
    coordinator_process: Process
    workers: List[WorkerHandle]
    token: Optional[str] = None
    allowed_modules: List[str] = field(default_factory=list)

    def client_token(self) -> str:
        """The token a client of this cluster presents: the configured one, or the one its coordinator
        made, fetched as any process of the same OS user may (transport.security)."""
        if self.token:
            return self.token
        security = Security()
        with grpc_server.channel(self.coordinator, security) as chan:
            paths.fetch_world_token(security, paths.coordinator_endpoint(chan, self.coordinator, 10), "test-client")
        return security.token

    def options(self, **overrides):
        """BackendOptions for joining this cluster from the test process."""
        values = dict(coordinator=self.coordinator, token=self.token, allowed_modules=self.allowed_modules)
        values.update(overrides)
        return BackendOptions(**values)

    def worker(self, name: str) -> WorkerHandle:
        return next(w for w in self.workers if w.name == name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kills one worker (SIGKILL by default: no goodbye) and reaps it."""
        handle = self.worker(name)
        handle.process.signal(sig)
        handle.process.popen.wait(10)

    def stop(self) -> None:
        for process in [w.process for w in self.workers] + [self.coordinator_process]:
            process.stop()


def _env(extra: Optional[Dict[str, str]]) -> Dict[str, str]:
    env = dict(os.environ)
    cwd = os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def start_cluster(
    workers: int = 2,
    *,
    names: Optional[Iterable[str]] = None,
    allowed_modules: Iterable[str] = (),
    token: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    coordinator_args: Sequence[str] = (),
    worker_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> Cluster:
    """Starts a coordinator and ``workers`` workers on free loopback ports; returns once all are ready."""
    names = list(names) if names is not None else [f"worker{i + 1}" for i in range(workers)]
    allowed = list(allowed_modules)
    child_env = _env(env)
    security = ["--token", token] if token else []
    coordinator = Process(
        [sys.executable, "-m", "distautograd.cli", "coordinator", "--host", "127.0.0.1", "--port", "0",
         *security, *coordinator_args],
        child_env,
        "coordinator",
    )
    started: List[WorkerHandle] = []
    processes: List[Process] = []
    try:
        address = coordinator.wait_ready(timeout).group("address")
        for name in names:
            argv = [sys.executable, "-m", "distautograd.cli", "worker", "--name", name, "--coordinator", address,
                    *security, *worker_args]
            for module in allowed:
                argv += ["--allow-module", module]
            processes.append(Process(argv, child_env, f"worker {name}"))
        for name, process in zip(names, processes):
            match = process.wait_ready(timeout)
            started.append(WorkerHandle(name, match.group("address"), int(match.group("rank")), process))
    except BaseException:
        for process in [*processes, coordinator]:
            process.stop()
        raise
    return Cluster(address, coordinator, started, token, allowed)
