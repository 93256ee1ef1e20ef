"""Calling functions on other workers and running the calls they send here; RRef values fetched and methods called.

This is also the runtime an RRef acts through (rrefs.RRefRuntime): ``to_here``, proxies and
``backward`` on the owner are calls like any other.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Callable, List, Optional

import torch

from distautograd import errors, metrics, native
from distautograd.engine import order
from distautograd.errors import failure
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime import anomaly, builtin_ops, profiling, remote_methods, tracing
from distautograd.runtime.codec import Codec
from distautograd.runtime.contexts import ContextStore
from distautograd.runtime.options import UNSET_TIMEOUT
from distautograd.runtime.peers import Peers
from distautograd.runtime.remote_methods import AsyncReturn, is_async
from distautograd.runtime.rref import RRef
from distautograd.runtime.rrefs import RRefStore
from distautograd.runtime.world import WorkerInfo, WorldView
from distautograd.transport import frame_cpu, reading
from distautograd.transport.deadlines import Deadlines
from distautograd.transport.dispatch import Deferred

log = logging.getLogger("distautograd")


def _settle(future, outcome) -> None:
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _named(decode: Callable, run) -> Callable:
    """``decode``, telling a traced run which function it runs."""

    def decoded():
        func, args, kwargs = decode()
        run.func = tracing.name(func)
        return func, args, kwargs
    return decoded


def _counted(complete, function: str, peer: str):
    """The call counted (metrics) as its answer arrives, then ``complete``: counted before the caller
    can see the answer. Its outcome is the callee's (an answer that then fails to decode counts ok)."""
    began = time.monotonic()

    def counted(response, attachments, error) -> None:
        metrics.CALLS_MADE.labels(function, peer, metrics.outcome(error)).inc()
        metrics.CALL_SECONDS.labels(function, peer).observe(time.monotonic() - began)
        complete(response, attachments, error)

    return counted


def _then(first: Callable, after: Callable[[], None]) -> Callable:
    """``first``, then ``after`` (a trace's record of it)."""

    def both(*args) -> None:
        try:
            first(*args)
        finally:
            after()
    return both


class Answer(torch.futures.Future):
    """The future of a call's answer: waiting on it first frees any connection this thread stopped
    reading to run a call (transport.reading), since the answer may come over it. Its callbacks
    (``then``, ``add_done_callback``) run in the thread that reads the answer, so that thread lends
    its connection while they run: a callback may itself wait for another call. A failed call fails
    it as torch's RPC fails its futures (through the compiled core, where it is built): then
    torch.futures.wait_all returns at the first failure, and wait() raises the very exception."""

    _callbacks = False

    def wait(self):
        reading.before_blocking()
        return super().wait()

    def then(self, callback):
        self._callbacks = True
        return super().then(callback)

    def add_done_callback(self, callback):
        self._callbacks = True
        return super().add_done_callback(callback)

    def follow(self, other: torch.futures.Future) -> "Answer":
        """Completes as ``other`` does (a future torch made from this one, e.g. a profiler's)."""
        other.add_done_callback(lambda done: self.settle(None, failure(done)) if failure(done) is not None
                                else self.settle(done.value()))
        return self

    def settle(self, value: Any = None, error: Optional[BaseException] = None) -> None:
        """Sets the result (or the exception), on the thread that read it."""
        role = reading.lend() if self._callbacks else None
        try:
            if error is None:
                self.set_result(value)
            elif native.core is not None:
                native.core.fail_future(self, error)
            else:
                self.set_exception(error)
        finally:
            if role is not None:
                reading.reclaim(role)


class Calls:
    def __init__(
        self,
        name: str,
        peers: Peers,
        codec: Codec,
        contexts: ContextStore,
        rrefs: RRefStore,
        world: WorldView,
        submit: Callable[..., None],
        timeout: Callable[[Optional[float]], Optional[float]],
        deadlines: Deadlines,
        threads: int = 16,
    ):
        """``threads``: how many calls may run at once on the threads that read them (as many
        again may run on the pool's ``submit``)."""
        self.name = name
        self._peers = peers
        self._codec = codec
        self._contexts = contexts
        self._rrefs = rrefs
        self._world = world
        self._submit = submit
        self._timeout = timeout
        self._deadlines = deadlines
        self._running = 0
        self._lock = threading.Lock()
        self._inline_slots = threading.BoundedSemaphore(max(1, threads))

    # ------------------------------------------------------------------ outgoing

    def invoke(
        self,
        to: WorkerInfo,
        func: Any,
        args: tuple,
        kwargs: dict,
        timeout: float,
        create_rref: int = 0,
        creator_fork: int = 0,
        mode: str = "async",
    ) -> torch.futures.Future:
        """Sends a call; the future holds the decoded result (or, for remote(), None once the owner has
        made the value). ``mode``: how torch's profiler names the call (sync, async, remote)."""
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__}")
        if profiling.on():
            profile = profiling.requested()
            send = functools.partial(self._send, to, func, args, kwargs, timeout, create_rref, creator_fork, profile)
            return Answer().follow(profiling.ranged(profiling.key(mode, func, self.name, to.name), send,
                                                    profile is not None))
        return self._send(to, func, args, kwargs, timeout, create_rref, creator_fork)

    def _send(self, to: WorkerInfo, func: Any, args: tuple, kwargs: dict, timeout: float, create_rref: int = 0,
              creator_fork: int = 0, profile: Optional[pb.Profile] = None) -> "Answer":
        ctx = self._contexts.current()
        if ctx is not None:
            ctx.sent_to(to.id)
        value, attachments = self._codec.encode((func, tuple(args or ()), dict(kwargs or {})), to.id, ctx)
        call = pb.Call(function=value, context_id=ctx.id if ctx else 0, create_rref=create_rref, creator_fork=creator_fork,
                       anomaly=anomaly.requested(ctx.anomaly) if ctx else 0, inspect=ctx.inspect if ctx else 0,
                       profile=profile)
        result = Answer()
        complete = self._completion(result, to.id, ctx)
        if metrics.ON:
            complete = _counted(complete, metrics.function_label(func), to.name)
        if tracing.on(ctx):
            call.trace_id = self._rrefs.mint()
            record = tracing.Call(ctx, call.trace_id, func, to.name, len(value.pickle) + sum(
                len(memoryview(a).cast("B")) for a in attachments))
            complete = _then(complete, record.answered)
        self._peers.request(to.id, pb.Request(call=call), attachments, self._timeout(timeout), complete)
        return result

    def remote(self, to: WorkerInfo, func: Any, args: tuple, kwargs: dict, timeout: float) -> RRef:
        """Runs ``func`` on ``to`` and keeps the result there; returns an RRef to it at once."""
        rref_id, fork_id = self._rrefs.mint(), self._rrefs.mint()
        owned = self._rrefs.create_owned(rref_id, fork_id) if to.id == self._rrefs.mint.rank else None
        created = self.invoke(to, func, args, kwargs, timeout, create_rref=rref_id, creator_fork=fork_id,
                              mode="remote")
        profiled = created if profiling.on() else None
        if owned is not None:
            # a call to ourselves that failed before running must still fail the value
            def fail_value(f: torch.futures.Future) -> None:
                error = failure(f)
                if error is not None and not owned.value.done():
                    owned.value.set_exception(error)

            created.add_done_callback(fail_value)
            created = None
        rref = RRef._make(self._rrefs, rref_id, to.id, fork_id, created)
        rref._profiled = profiled
        return rref

    def fetch(self, rref: RRef, timeout: float = UNSET_TIMEOUT) -> torch.futures.Future:
        """The value of ``rref``, copied from its owner."""
        ctx = self._contexts.current()
        if ctx is not None:
            ctx.sent_to(rref._owner)
        body = pb.FetchRRef(rref_id=rref._id, context_id=ctx.id if ctx else 0)
        result = Answer()
        complete = self._completion(result, rref._owner, ctx, rref)
        self._peers.request(rref._owner, pb.Request(fetch_rref=body), (), self._timeout(timeout), complete)
        return result

    def call_method(self, rref: RRef, name: str, args: tuple, kwargs: dict, mode: str, timeout: float) -> Any:
        """``rref.rpc_sync().name(*args)`` and its async and remote forms."""
        args = (rref, name, args, kwargs)
        if mode == "remote":
            return self.remote(rref.owner(), remote_methods.invoke_method, args, {}, timeout)
        future = self.invoke(rref.owner(), remote_methods.invoke_method, args, {}, timeout)
        return future if mode == "rpc_async" else future.wait()

    def type_on_owner(self, rref: RRef, timeout: float) -> torch.futures.Future:
        return self.invoke(rref.owner(), remote_methods._rref_typeof_on_owner, (rref,), {}, timeout)

    def backward_on_owner(self, rref: RRef, context_id: int, retain_graph: bool) -> None:
        self.invoke(rref.owner(), remote_methods.rref_backward, (rref, context_id, retain_graph), {},
                    UNSET_TIMEOUT).wait()

    def _completion(self, result: Answer, src: int, ctx, rref: Optional[RRef] = None):
        """Decodes a response into ``result``, in the thread that reads it; made on the caller's thread
        as it sends. ``ctx``: where the reply's tensors get recv points, unless the call is made under
        no_grad: torch reads the reply under the caller's grad mode, so its tensors require grad, as
        sent, and record no recv (the request's send points are recorded either way, as torch's are)."""
        if not torch.is_grad_enabled():
            ctx = None

        def complete(response, attachments, error) -> None:
            if error is not None:
                # remote() failed on the owner: its error is the one to report, as torch's to_here does
                result.settle(error=(rref.creation_failure() if rref is not None else None) or error)
                return
            if response.profiled:  # a profiled call's events on the callee, for this thread's profiler
                result.profiled = profiling.as_tuples(response.profiled)
            try:
                value = None
                if response.WhichOneof("body") == "value":
                    value = self._codec.decode(response.value, attachments, src, ctx)
            except BaseException as exc:
                result.settle(error=exc)
                return
            result.settle(value)

        return complete

    # ------------------------------------------------------------------ incoming

    def handle_call(self, link, call: pb.Call, attachments) -> Optional[Deferred]:
        """Registers the RRefs a call carries in stream order (so their forks count before later
        releases), then decodes and runs it on a worker thread: the reader goes on reading."""
        if frame_cpu.ON:
            frame_cpu.stamp("dispatched")
        peer = link.peer_rank
        owned = self._rrefs.create_owned(call.create_rref, call.creator_fork, for_peer=True) if call.create_rref else None
        try:
            ctx = self._contexts.for_incoming(call.context_id, peer) if call.context_id else None
            if ctx is not None and (call.anomaly or call.inspect):
                ctx.anomaly |= call.anomaly
                ctx.inspect |= call.inspect
            rrefs = self._codec.rrefs_of(call.function)
        except BaseException as exc:
            if owned is not None and not owned.value.done():
                owned.value.set_exception(exc)  # whoever waits for the value learns why it never came
            raise
        decode = functools.partial(self._decode_call, call, attachments, peer, ctx, rrefs)
        reply = Deferred()
        profiled: List[pb.ProfiledEvent] = []
        profile = (call.profile, profiled) if call.HasField("profile") else None
        if owned is not None:  # remote(): the answer says the value is made (or why it is not), as torch's
            def made(outcome) -> None:
                _settle(owned.value, outcome)
                reply.resolve(outcome if isinstance(outcome, BaseException) else
                              (pb.Response(empty=pb.Empty(), profiled=profiled), ()))

            self._start(ctx, peer, decode, made, profile)
            return reply
        deliver = functools.partial(self._encode_reply, reply, peer, ctx, profiled)
        if call.trace_id and tracing.on(ctx):
            run = tracing.Run(ctx, call.trace_id, self._world.name_of(peer))
            decode = _named(decode, run)
            deliver = _then(deliver, run.finished)
        self._start(ctx, peer, decode, deliver, profile)
        return reply

    def handle_fetch(self, link, body: pb.FetchRRef, attachments) -> Deferred:
        """The value of an RRef this worker owns. A fetch may come before the call that creates the
        value (they travel apart), but not forever: after the call timeout, it fails and the entry
        its mention made is dropped, so fetches of ids that never come cannot pile up."""
        ctx = self._contexts.for_incoming(body.context_id, link.peer_rank) if body.context_id else None
        reply = Deferred()
        value = self._rrefs.value(body.rref_id)
        wait = self._timeout(None) or 60.0

        def give_up() -> None:
            if not value.done():
                self._rrefs.forget_unborn(body.rref_id)
                reply.resolve(errors.NotFound(
                    f"RRef {body.rref_id} was never created on {self.name} (waited {wait:g} s for its value)"))

        expiry = self._deadlines.schedule(wait, give_up)

        def send(done) -> None:
            self._deadlines.cancel(expiry)
            self._encode_reply(reply, link.peer_rank, ctx, (), done.exception() or done.result())

        value.add_done_callback(send)
        return reply

    def _decode_call(self, call: pb.Call, attachments, peer: int, ctx, rrefs) -> tuple:
        decoded = self._codec.decode(call.function, attachments, peer, ctx, rrefs)
        if not (isinstance(decoded, tuple) and len(decoded) == 3):
            raise errors.InvalidArgument("a call must carry (function, args, kwargs)")
        func, args, kwargs = decoded
        if not callable(func) or not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise errors.InvalidArgument(
                f"a call must carry a callable, a tuple and a dict; got {type(func).__name__}, "
                f"{type(args).__name__}, {type(kwargs).__name__}"
            )
        return func, args, kwargs

    def _encode_reply(self, reply: Deferred, peer: int, ctx, profiled, outcome) -> None:
        if not isinstance(outcome, BaseException):
            try:
                encoded, attachments = self._codec.encode(outcome, peer, ctx)
                outcome = (pb.Response(value=encoded, profiled=profiled), attachments)
            except BaseException as exc:
                outcome = exc
        if frame_cpu.ON:
            frame_cpu.stamp("encoded")
        reply.resolve(outcome)

    def _start(self, ctx, peer: int, decode, deliver, profile=None) -> None:
        """Decodes and runs the call on a worker thread; ``deliver`` gets its result or exception, once.
        ``profile``: (what the caller's profiler records, the list its events go into), or None."""
        with self._lock:
            self._running += 1
        served = metrics.Served(self._world.name_of(peer)) if metrics.ON else None

        def finish(outcome) -> None:
            if served is not None:  # counted before the caller can see the answer
                served.done(outcome if isinstance(outcome, BaseException) else None)
            try:
                if not isinstance(outcome, BaseException):
                    order.place_tensors(outcome)  # what the call made, placed before another thread meets it
                deliver(outcome)
            finally:
                with self._lock:
                    self._running -= 1

        contexts = self._contexts

        def task() -> None:
            func = None
            try:
                func, args, kwargs = decode()
                if frame_cpu.ON:
                    frame_cpu.stamp("decoded")
                if served is not None:
                    served.function = metrics.function_label(func)
                previous = contexts.swap(ctx)
                try:
                    with anomaly.recording(ctx.anomaly if ctx is not None else 0), \
                            profiling.recording(*(profile or (None, None))) as recorded:
                        result = builtin_ops.call(func, args, kwargs)
                        if frame_cpu.ON:
                            frame_cpu.stamp("ran")
                        answered_later = result.future if isinstance(result, AsyncReturn) else result
                        if recorded is not None and is_async(func) and isinstance(answered_later, torch._C.Future):
                            recorded.until(answered_later)
                finally:
                    contexts.swap(previous)
                if isinstance(result, AsyncReturn):
                    result = result.future
                elif not is_async(func):
                    finish(result)
                    return
                if not isinstance(result, torch._C.Future):  # .then() returns the C base class
                    raise RuntimeError(
                        f"Functions decorated with @rpc.async_function must return a torch.futures.Future object, "
                        f"but {getattr(func, '__qualname__', func)} (decorated with @async_execution) returned "
                        f"{type(result).__name__}")
            except BaseException as exc:
                if func is not None:  # the call's own code failed, not its decoding: say so here too, as torch
                    log.warning("%s: %s, called by %s, raised %s: %s", self.name, tracing.name(func),
                                self._world.name_of(peer), type(exc).__name__, exc)
                finish(exc)
                return
            result.add_done_callback(lambda f: finish(failure(f) or f.value()))

        if self._inline_slots.acquire(blocking=False):
            role = reading.lend()  # this thread read the call: it runs it (see transport.reading)
            if role is not None:
                try:
                    task()
                finally:
                    self._inline_slots.release()
                    reading.reclaim(role)
                return
            self._inline_slots.release()
        try:
            self._submit(task)
        except RuntimeError:
            finish(errors.Unavailable(f"{self.name} is shutting down"))

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no incoming call is running here (only shutdown asks, so it polls)."""
        end = time.monotonic() + timeout
        while self._running and time.monotonic() < end:
            time.sleep(0.01)
        return not self._running
