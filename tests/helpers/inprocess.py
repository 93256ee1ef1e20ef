"""A world of real agents in one process: each its own gRPC server, sockets and threads, started in
well under a second, so the backward protocol (runtime/backward.py, runtime/reach.py) can be tested
fast enough for mutation testing. The public API finds one agent per process, so tests here speak
to the agents directly; a function run on a worker finds its agent by name (``AGENTS``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Dict, Iterator, List, Optional

import torch

from distautograd.runtime.agent import Agent
from distautograd.runtime.contexts import Context
from distautograd.runtime.options import BackendOptions
from distautograd.runtime.rendezvous import free_port
from distautograd.transport import reading

_PROCESS_WIDE = {"distautograd-shm-release", "distautograd-reading-watch", "distautograd-recv",
                 "distautograd-release"}  # waiting (for work, or to send releases): never in torch
AGENTS: Dict[str, Agent] = {}  # every agent of the worlds alive in this process, by name


class World:
    def __init__(self, names: List[str], **options) -> None:
        self._threads_before = set(threading.enumerate())
        self._reading_before = reading.standby.busy()  # other agents of this process (another tier's) read too
        port = free_port()
        options.setdefault("allowed_modules", ["tests"])
        self.agents = [Agent(name, BackendOptions(init_method=f"tcp://127.0.0.1:{port}", **options))
                       for name in names]
        errors: List[BaseException] = []

        def start(rank: int, agent: Agent) -> None:
            try:
                agent.start(rank, len(names))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(rank, agent)) for rank, agent in enumerate(self.agents)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        if errors or any(thread.is_alive() for thread in threads):
            self.close()
            raise RuntimeError(f"the in-process world did not start: {errors}")
        for agent in self.agents:
            AGENTS[agent.name] = agent

    def __getitem__(self, name: str) -> Agent:
        return AGENTS[name]

    def close(self, wait: float = 10.0) -> None:
        """Stops every agent, then waits (bounded) until the threads they started have ended: a thread
        still in torch when the interpreter exits would abort it."""
        for agent in reversed(self.agents):
            AGENTS.pop(agent.name, None)
            with contextlib.suppress(Exception):
                agent.stop(graceful=False)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            left = [t.name for t in threading.enumerate() if t not in self._threads_before and t.is_alive()
                    and t.name not in _PROCESS_WIDE]
            if not left and reading.standby.busy() <= self._reading_before:
                return
            time.sleep(0.05)
        raise RuntimeError(f"threads still running {wait:g} s after the world stopped: {left}, "
                           f"{reading.standby.busy() - self._reading_before} more reading than before")


def call(src: str, dst: str, func, *args, timeout: Optional[float] = None):
    """``rpc_sync`` from agent ``src`` (in the thread's context there, if any) to ``dst``."""
    agent = AGENTS[src]
    return agent.calls.invoke(agent.world.resolve(dst), func, args, {}, timeout, mode="sync").wait()


@contextlib.contextmanager
def context(name: str, anomaly: int = 0, inspect: int = 0) -> Iterator[Context]:
    """``with dist_autograd.context()`` on agent ``name``."""
    contexts = AGENTS[name].contexts
    ctx = contexts.create()
    ctx.anomaly, ctx.inspect = anomaly, inspect
    try:
        yield ctx
    finally:
        contexts.exit(ctx)


def backward(name: str, ctx: Context, roots, **kwargs):
    return AGENTS[name].backward.backward(ctx, roots, **kwargs)


def backward_in_thread(name: str, ctx: Context, roots, **kwargs):
    """``backward`` on a thread of its own, started: (the thread, a dict that gets the pass's error
    under "error" if it raises), for a test that acts while the pass runs."""
    outcome: dict = {}

    def run() -> None:
        try:
            backward(name, ctx, roots, **kwargs)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def gradients(name: str, context_id: int) -> Dict[torch.Tensor, torch.Tensor]:
    """The leaf gradients agent ``name`` holds in the context (it must have heard of it)."""
    return AGENTS[name].contexts.get(context_id).gradients()
