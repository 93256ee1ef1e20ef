"""The process's Prometheus metrics (prometheus-client): what every layer counts, served by transport/http.py.

One registry per process, not the client's global one, so a program's own metrics stay its own.
Names and units follow Prometheus's conventions: base units (seconds, bytes), ``_total`` on
counters. Labels stay bounded: a function's qualified name, a worker's name, an outcome (``ok`` or
the exception's type name), a transport (unix, tcp, grpc, local, shm).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ON = False  # counted only while served (transport/http.py turns it on): off, each call costs one flag test
REGISTRY = CollectorRegistry()
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
HEARTBEATS_MISSED = Counter("distautograd_heartbeats_missed_total", "Heartbeats this worker could not send to the "
                            "coordinator; on the coordinator, members found silent past the heartbeat timeout",
                            registry=REGISTRY)
MEMBERS = Gauge("distautograd_members", "On the coordinator: members of the world, by state", ["state"],
                registry=REGISTRY)
DEPARTURES = Counter("distautograd_departures_total", "On the coordinator: members gone, by how (died, left)",
                     ["how"], registry=REGISTRY)
REJOINS = Counter("distautograd_rejoins_total", "On the coordinator: members that joined again after their "
                  "connection broke", registry=REGISTRY)


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
    """``gauge`` reads ``read()`` at each scrape (the last process part to ask wins: one per process)."""
    gauge.set_function(read)
