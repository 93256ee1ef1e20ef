"""Recording a context's trace (views.trace) where the runtime works: calls made and run, passes, waves, pushes.

Everything here is reached only for a context with ``inspect & TRACE``; the runtime checks
``on(ctx)`` first, so a context without a trace costs one attribute test per call.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Optional

from distautograd.runtime.inspection import TRACE
from distautograd.views import trace


def on(ctx) -> bool:
    return ctx is not None and bool(ctx.inspect & TRACE)


def name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__


class Call:
    """A call this worker makes: its span runs from sending to the answer, with both arrows."""

    def __init__(self, ctx, trace_id: int, func, callee: str, nbytes: int):
        self.ctx, self.trace_id, self.callee, self.nbytes = ctx, trace_id, callee, nbytes
        self.func = name(func)
        self.tid = threading.get_ident() % 100000
        self.start = trace.now_us()
        trace.flow(ctx.id, trace_id * 2, True, f"call {self.func}", self.start)

    def answered(self) -> None:
        end = trace.now_us()
        trace.flow(self.ctx.id, self.trace_id * 2 + 1, False, f"answer of {self.func}", end)
        trace.span(self.ctx.id, f"rpc {self.func} -> {self.callee}", self.start, end, "call", callee=self.callee,
                   sent_bytes=self.nbytes, tid=self.tid)


class Run:
    """A call this worker runs for another: its span, from the request's arrow to the answer's."""

    def __init__(self, ctx, trace_id: int, caller: str):
        self.ctx, self.trace_id, self.caller = ctx, trace_id, caller
        self.start = trace.now_us()
        self.func = "?"
        trace.flow(ctx.id, trace_id * 2, False, "call", self.start)

    def finished(self) -> None:
        end = trace.now_us()
        trace.span(self.ctx.id, f"run {self.func} for {self.caller}", self.start, end, "call", caller=self.caller)
        trace.flow(self.ctx.id, self.trace_id * 2 + 1, True, f"answer of {self.func}", max(self.start, end - 0.5))


def waves(ctx, worker: str) -> Optional[Callable[[float, float, int, bool], None]]:
    """What LocalPass calls after each wave, for a traced context; None otherwise."""
    if not on(ctx):
        return None

    def observe(start: float, end: float, nodes: int, whole: bool) -> None:
        trace.span(ctx.id, f"backward: {nodes} node{'s' if nodes != 1 else ''}" + ("" if whole else ", one by one"),
                   start, end, "backward", worker=worker)
    return observe


def pushed(ctx, first_message: int, dest: str) -> None:
    trace.flow(ctx.id, first_message * 2 + 1, True, f"gradients to {dest}", trace.now_us())


@contextlib.contextmanager
def push_arriving(ctx, first_message: int, src: str) -> Iterator[None]:
    """Handling a push of a traced context: its arrow's end now, its span (and the waves it runs)
    when it is done, before the context's trace can be taken."""
    start = trace.now_us()
    trace.flow(ctx.id, first_message * 2 + 1, False, f"gradients from {src}", start)
    with trace.recording(ctx.id):
        try:
            yield
        finally:
            trace.span(ctx.id, f"gradients from {src}", start, trace.now_us(), "backward")


def root_pass(ctx, start: float, participants: int) -> None:
    trace.span(ctx.id, "dist_autograd.backward", start, trace.now_us(), "backward", participants=participants)
