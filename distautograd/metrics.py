"""The process's Prometheus metrics (prometheus-client): what every layer counts, served by transport/http.py.

One registry per process, not the client's global one, so a program's own metrics stay its own.
Names and units follow Prometheus's conventions: base units (seconds, bytes), ``_total`` on
counters. Labels stay bounded: a function's name (at most MAX_FUNCTIONS of them), a worker's name, an
outcome (``ok`` or the exception's type name), a transport (unix, tcp, grpc, shm).
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Callable, Optional

import torch.jit._builtins
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ON = False  # per-message counting, only while a port serves them (serving()): off, a message costs a flag test
REGISTRY = CollectorRegistry()
MAX_FUNCTIONS = 200  # distinct function labels; calls of any further function count as "(other)"
_servers = 0
_functions: set = set()
_lock = threading.Lock()
_LATENCY = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

CALLS_MADE = Counter("distautograd_calls_made_total", "Calls this process made (rpc_sync, rpc_async, remote), "
                     "by function, callee and outcome", ["function", "peer", "outcome"], registry=REGISTRY)
CALL_SECONDS = Histogram("distautograd_call_duration_seconds", "From sending a call to its answer, by function "
                         "and callee", ["function", "peer"], buckets=_LATENCY, registry=REGISTRY)
CALLS_SERVED = Counter("distautograd_calls_served_total", "Calls this process ran for others, by function, caller "
                       "and outcome", ["function", "peer", "outcome"], registry=REGISTRY)
SERVE_SECONDS = Histogram("distautograd_call_serve_duration_seconds", "Running a call for another worker, by "
                          "function", ["function"], buckets=_LATENCY, registry=REGISTRY)
SENT_BYTES = Counter("distautograd_sent_bytes_total", "Bytes sent, by transport (shm: handed over in shared memory)",
                     ["transport"], registry=REGISTRY)
RECEIVED_BYTES = Counter("distautograd_received_bytes_total", "Bytes received, by transport (shm: taken from shared "
                         "memory)", ["transport"], registry=REGISTRY)
PASSES_STARTED = Counter("distautograd_backward_passes_started_total", "Distributed backward passes this process "
                         "drove (its dist_autograd.backward calls)", registry=REGISTRY)
PASSES_ENDED = Counter("distautograd_backward_passes_total", "Distributed backward passes this process drove that "
                       "ended, by outcome: ok, or the type of the error that failed it (a worker died, a timeout, a node raised)",
                       ["outcome"], registry=REGISTRY)
PASS_SECONDS = Histogram("distautograd_backward_duration_seconds", "A distributed backward pass this process drove, "
                         "from the call to its end", buckets=_LATENCY, registry=REGISTRY)
PASS_PARTICIPANTS = Histogram("distautograd_backward_participants", "Workers taking part in a backward pass this "
                              "process drove, itself included", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128),
                              registry=REGISTRY)
OPEN_CONTEXTS = Gauge("distautograd_open_contexts", "Distributed autograd contexts open in this process",
                      registry=REGISTRY)
LIVE_RREFS = Gauge("distautograd_owned_rrefs", "RRef values this process owns", registry=REGISTRY)
SHARED_MEMORY = Gauge("distautograd_shared_memory_lent_bytes", "Shared-memory segments this process has lent to "
                      "peers and not had back", registry=REGISTRY)
HEARTBEATS_UNSENT = Counter("distautograd_heartbeats_unsent_total", "Heartbeats this worker could not send to the "
                            "coordinator", registry=REGISTRY)
SILENT_MEMBERS = Counter("distautograd_silent_members_total", "On the coordinator: members found silent past the "
                         "heartbeat timeout (then unreachable)", registry=REGISTRY)
MEMBERS = Gauge("distautograd_members", "On the coordinator: members of the world, by state", ["state"],
                registry=REGISTRY)
DEPARTURES = Counter("distautograd_departures_total", "On the coordinator: members gone, by how (died, left)",
                     ["how"], registry=REGISTRY)
REJOINS = Counter("distautograd_rejoins_total", "On the coordinator: members that joined again after their "
                  "connection broke", registry=REGISTRY)


def serving(change: int) -> None:
    """A port starts (+1) or stops (-1) serving the metrics: per-message counting is on while any does."""
    global ON, _servers
    with _lock:
        _servers += change
        ON = _servers > 0


def function_label(func) -> str:
    """A called function's label: torch's name for its operators (``aten::add``), else its qualified
    name (the function a ``functools.partial`` wraps, the class of a callable object); never a repr,
    which could carry a tensor's values. At most MAX_FUNCTIONS distinct ones."""
    while isinstance(func, functools.partial):
        func = func.func
    builtin = _builtin_name(func)
    name = builtin or getattr(func, "__qualname__", None) or type(func).__qualname__
    module = getattr(func, "__module__", None) if builtin is None else None
    label = f"{module}.{name}" if module and not builtin else name
    with _lock:
        if label in _functions:
            return label
        if len(_functions) >= MAX_FUNCTIONS:
            return "(other)"
        _functions.add(label)
    return label


def _builtin_name(func) -> Optional[str]:
    try:
        return torch.jit._builtins._find_builtin(func)
    except Exception:  # an object torch's table cannot even look up (unhashable): not one of its operators
        return None


def outcome(error) -> str:
    """An outcome label: ``ok``, or the type name of what went wrong."""
    return "ok" if error is None else type(error).__name__


class Served:
    """One call run for another worker, counted when it is done (its function known once decoded)."""

    def __init__(self, peer: str):
        self.peer = peer
        self.function = "(undecodable)"
        self._began = time.monotonic()

    def done(self, error: Optional[BaseException]) -> None:
        CALLS_SERVED.labels(self.function, self.peer, outcome(error)).inc()
        SERVE_SECONDS.labels(self.function).observe(time.monotonic() - self._began)


def watch(gauge: Gauge, read: Callable[[], float]) -> None:
    """``gauge`` reads ``read()`` at each scrape (the last port started wins: one per process)."""
    gauge.set_function(read)
