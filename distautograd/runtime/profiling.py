"""torch's profiler sees remote calls as it sees torch's own: a range per call, named as torch names it,
and, under the legacy profiler, what the call did on the callee, as remote events of the caller's profile.

The caller (``ranged``) opens ``rpc_async#f(worker0 -> worker1)`` around sending a call and closes
it when the answer is in; a call made while torch's legacy profiler is on also asks the callee to
profile it (``requested``). The callee (``recording``) runs the call under the same profiler
configuration and sends the events back with the answer; the caller adds them to its profile
under ``<range>#remote_op: <event>``, as torch's RPC does. That last step needs the compiled core
(torch adds remote events in C++ only); without it the ranges are still there.

A server-side profile (torch's ``rpc._server_process_global_profile``) makes every call this
process serves run under the legacy profiler while it is on, and keeps each call's records.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, List, Optional

import torch

from distautograd import native
from distautograd.protocol.v1 import messages_pb2 as pb

REMOTE_OP = "#remote_op: "


def on() -> bool:
    """Whether a torch profiler (legacy or kineto) is recording on this thread."""
    return torch.autograd._profiler_enabled()


def key(mode: str, func, src: str, dst: str) -> str:
    """torch's name for a call's range: ``rpc_{sync|async|remote}#{function}({src} -> {dst})``."""
    return f"rpc_{mode}#{function_name(func)}({src} -> {dst})"


def function_name(func) -> str:
    """A called function as torch's profiler names it: ``aten::add`` for torch's operators, else its
    qualified name (also the metrics' ``function`` label)."""
    if isinstance(func, torch.jit.ScriptFunction):
        return torch._jit_internal._qualified_name(func)
    return torch.jit._builtins._find_builtin(func) or getattr(func, "__qualname__", None) or repr(func)


def requested() -> Optional[pb.Profile]:
    """What the callee of a call made now should record, if torch's legacy profiler runs here
    (torch profiles remote calls only under it) and remote events can be added to it."""
    if native.core is None:
        return None
    config = native.core.legacy_profiler_config()
    if config is None or torch._C._autograd._profiler_type() != torch._C._profiler.ActiveProfilerType.LEGACY:
        return None
    return pb.Profile(shapes=config[0], memory=config[1])


def ranged(name: str, send, profiled: bool) -> torch.futures.Future:
    """``send()``'s future, inside a profiler range called ``name`` that ends when the future does;
    ``profiled``: the callee's events (the future's ``profiled``) join this thread's profile."""
    with torch.autograd.profiler.record_function(name) as rf:
        answer = send()
        future = native.core.with_remote_events(answer, name + REMOTE_OP) if profiled else answer
        return rf._call_end_callbacks_on_future(future)


class ServerProfile:
    """What one server-side profile collects: each served call's records, as torch's legacy profiler
    gives them (a list per thread)."""

    def __init__(self, shapes: bool, memory: bool):
        self.shapes = shapes
        self.memory = memory
        self.records: List[list] = []


_serving: List[ServerProfile] = []  # the server-side profiles on now, outermost first
_serving_lock = threading.Lock()


def serve_profiled(profile: ServerProfile) -> None:
    with _serving_lock:
        _serving.append(profile)


def stop_serving_profiled(profile: ServerProfile) -> None:
    with _serving_lock:
        if profile in _serving:
            _serving.remove(profile)


class Recording:
    """One call's profile on the callee. A call that answers later (@async_execution) hands its
    future to ``until``: the profile then goes on until that future completes, as torch's does."""

    def __init__(self, servers: List[ServerProfile], profile: Optional[pb.Profile], into):
        self.servers, self.profile, self.into = servers, profile, into
        self.later: Optional[torch.futures.Future] = None

    def until(self, future: torch.futures.Future) -> None:
        self.later = future

    def end(self) -> None:
        """Called where the profile was started, when the call's function returned."""
        if self.later is not None and native.core is not None:
            state = native.core.ThreadState()  # the profile, to end where the answer completes
            torch.autograd._disable_profiler_legacy(torch._C._autograd._ProfilerDisableOptions(True, False))
            self.later.add_done_callback(lambda _: state.run(self._collect))
        else:
            self._collect()

    def _collect(self) -> None:
        threads = torch.autograd._disable_profiler_legacy()
        for server in self.servers:
            server.records.append(threads)
        if self.profile is not None:
            for thread in threads:
                self.into.extend(_event(record) for record in thread if record.name() != "__start_profile")


@contextlib.contextmanager
def recording(profile: Optional[pb.Profile], into: Optional[List[pb.ProfiledEvent]]) -> Iterator[Optional[Recording]]:
    """On the callee: runs the block under torch's legacy profiler when the caller asked (``profile``;
    the events go ``into`` the list for the answer) or a server-side profile is on (each gets the
    call's records). Nothing happens (and None is given) when neither."""
    with _serving_lock:
        servers = list(_serving)
    if profile is None and not servers:
        yield None
        return
    shapes = any(p.shapes for p in servers) or (profile is not None and profile.shapes)
    memory = any(p.memory for p in servers) or (profile is not None and profile.memory)
    config = torch.autograd.profiler_legacy.profile(record_shapes=shapes, profile_memory=memory)
    torch.autograd._enable_profiler_legacy(config.config())
    record = Recording(servers, profile, into)
    try:
        yield record
    finally:
        record.end()


def _event(record) -> pb.ProfiledEvent:
    return pb.ProfiledEvent(
        kind=record.kind(), name=record.name(), thread=record.thread_id(), handle=record.handle(),
        shapes=[pb.Dims(sizes=shape) for shape in record.shapes()], cpu_memory=record.cpu_memory_usage(),
        cpu_ns=int(record.start_us() * 1000), node=record.node_id())


def as_tuples(events) -> list:
    """Received events as the compiled core takes them."""
    return [(e.kind, e.name, e.thread, e.handle, [list(d.sizes) for d in e.shapes], e.cpu_memory, e.cpu_ns, e.node)
            for e in events]
