"""The runtime this process joined the world with (one per process, as in torch), for the public API to find."""

from __future__ import annotations

import threading
from typing import Any, Optional

NOT_INITIALIZED = "RPC has not been initialized. Call distautograd.rpc.init_rpc first."
NOT_SET = "Current RPC agent is not set! Did you initialize the RPC framework (distautograd.rpc.init_rpc)?"

_agent: Optional[Any] = None
_lock = threading.Lock()


def get() -> Any:
    agent = _agent
    if agent is None:
        raise RuntimeError(NOT_INITIALIZED)
    return agent


def peek() -> Optional[Any]:
    return _agent


def install(agent: Optional[Any]) -> None:
    global _agent
    with _lock:
        _agent = agent
