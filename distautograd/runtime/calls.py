"""Calling functions on other workers and running the calls they send here."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Optional

import torch

from distautograd import errors
from distautograd.runtime.rrefs import UNSET_TIMEOUT, RRef
from distautograd.runtime.world import WorkerInfo
from distautograd.v1 import wire_pb2 as pb

if TYPE_CHECKING:
    from distautograd.runtime.agent import Agent

log = logging.getLogger("distautograd")

ASYNC_ATTR = "_distautograd_async_execution"


class AsyncReturn:
    """Returned by a function that runs another, asynchronous one: the call answers when ``future`` does."""

    def __init__(self, future: torch.futures.Future):
        self.future = future


def is_async(func: Any) -> bool:
    return bool(getattr(getattr(func, "__func__", func), ASYNC_ATTR, False))


class Calls:
    def __init__(self, agent: "Agent"):
        self.agent = agent
        self._running = 0
        self._idle = threading.Condition()

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
    ) -> Future:
        """Sends a call; the future holds the decoded result (or, for remote(), None once the owner has it)."""
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__}")
        ctx = self.agent.contexts.current()
        value, attachments = self.agent.codec.encode((func, tuple(args or ()), dict(kwargs or {})), to.id, ctx)
        call = pb.Call(function=value, context_id=ctx.id if ctx else 0, create_rref=create_rref, creator_fork=creator_fork)
        sent = self.agent.request(to.id, pb.Request(call=call), attachments, self.agent.timeout(timeout))
        return self._decoded(sent, to.id, ctx)

    def fetch(self, rref: RRef, timeout: float = UNSET_TIMEOUT) -> Future:
        """The value of ``rref``, copied from its owner."""
        ctx = self.agent.contexts.current()
        body = pb.FetchRRef(rref_id=rref._id, context_id=ctx.id if ctx else 0)
        sent = self.agent.request(rref._owner, pb.Request(fetch_rref=body), (), self.agent.timeout(timeout))
        return self._decoded(sent, rref._owner, ctx, rref._created)

    def _decoded(self, sent: Future, src: int, ctx, creation: Optional[Future] = None) -> Future:
        result: Future = Future()

        def done(f: Future) -> None:
            try:
                if f.exception() is not None and creation is not None and creation.done():
                    # remote() failed on the owner: its error is the one to report, as torch's to_here does
                    creation.result()
                response, attachments = f.result()
                if response.WhichOneof("body") == "value":
                    result.set_result(self.agent.codec.decode(response.value, attachments, src, ctx))
                else:
                    result.set_result(None)
            except BaseException as exc:
                result.set_exception(exc)

        sent.add_done_callback(done)
        return result

    # ------------------------------------------------------------------ incoming

    def handle_call(self, link, call: pb.Call, attachments) -> Optional[Future]:
        """Decodes a call in stream order (so RRef forks it carries register before later releases),
        then runs it on the worker threads."""
        peer = link.peer_rank
        owned = self.agent.rrefs.create_owned(call.create_rref, call.creator_fork) if call.create_rref else None
        try:
            ctx = self.agent.contexts.for_incoming(call.context_id, peer) if call.context_id else None
            func, args, kwargs = self._decode_call(call, attachments, peer, ctx)
        except BaseException as exc:
            if owned is not None and not owned.value.done():
                owned.value.set_exception(exc)  # whoever waits for the value learns why it never came
            raise
        if owned is not None:
            self._start(lambda: self._run(ctx, func, args, kwargs), owned.value, None)
            return None  # the owner has the rref: that is all remote() waits for
        reply: Future = Future()
        self._start(lambda: self._run(ctx, func, args, kwargs), reply, (peer, ctx))
        return reply

    def _decode_call(self, call: pb.Call, attachments, peer: int, ctx) -> tuple:
        decoded = self.agent.codec.decode(call.function, attachments, peer, ctx)
        if not (isinstance(decoded, tuple) and len(decoded) == 3):
            raise errors.InvalidArgument("a call must carry (function, args, kwargs)")
        func, args, kwargs = decoded
        if not callable(func) or not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise errors.InvalidArgument(
                f"a call must carry a callable, a tuple and a dict; got {type(func).__name__}, "
                f"{type(args).__name__}, {type(kwargs).__name__}"
            )
        return func, args, kwargs

    def _start(self, run, target: Future, encode_for) -> None:
        with self._idle:
            self._running += 1

        def finish(outcome: Future) -> None:
            try:
                value = outcome.result()
                if encode_for is not None:
                    peer, ctx = encode_for
                    encoded, atts = self.agent.codec.encode(value, peer, ctx)
                    value = (pb.Response(value=encoded), atts)
                target.set_result(value)
            except BaseException as exc:
                target.set_exception(exc)
            finally:
                with self._idle:
                    self._running -= 1
                    self._idle.notify_all()

        def task() -> None:
            outcome: Future = Future()
            try:
                pending, result = run()
            except BaseException as exc:
                outcome.set_exception(exc)
                finish(outcome)
                return
            if pending:
                result.add_done_callback(finish)
            else:
                outcome.set_result(result)
                finish(outcome)

        try:
            self.agent.submit(task)
        except RuntimeError:
            with self._idle:
                self._running -= 1
            target.set_exception(errors.Unavailable(f"{self.agent.name} is shutting down"))

    def _run(self, ctx, func, args, kwargs) -> tuple:
        """Runs the function in the caller's context: (False, result), or (True, a future of it) for
        an @async_execution function."""
        with self.agent.contexts.activate(ctx):
            result = func(*args, **kwargs)
        if isinstance(result, AsyncReturn):
            result = result.future
        elif not is_async(func):
            return False, result
        if not isinstance(result, torch._C.Future):  # .then() returns the C base class
            raise TypeError(
                f"{getattr(func, '__qualname__', func)} is decorated with @async_execution but returned "
                f"{type(result).__name__}, not a torch.futures.Future"
            )
        bridged: Future = Future()

        def copy(f: torch.futures.Future) -> None:
            try:
                bridged.set_result(f.value())
            except BaseException as exc:
                bridged.set_exception(exc)

        result.add_done_callback(copy)
        return True, bridged

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no incoming call is running here."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)
