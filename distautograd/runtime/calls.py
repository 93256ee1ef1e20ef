"""Calling functions on other workers and running the calls they send here."""

from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Optional

import torch

from distautograd import errors
from distautograd.runtime.rrefs import UNSET_TIMEOUT, RRef
from distautograd.runtime.world import WorkerInfo
from distautograd.transport.dispatch import Deferred
from distautograd.protocol.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from distautograd.runtime.agent import Agent

log = logging.getLogger("distautograd")

ASYNC_ATTR = "_distautograd_async_execution"


class AsyncReturn:
    """Returned by a function that runs another, asynchronous one: the call answers when ``future`` does."""

    def __init__(self, future: torch.futures.Future):
        self.future = future


def _settle(future: Future, outcome) -> None:
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def failure(future: torch.futures.Future) -> Optional[BaseException]:
    """The exception a completed torch future holds, or None."""
    try:
        future.value()
    except BaseException as exc:
        return exc
    return None


def is_async(func: Any) -> bool:
    return bool(getattr(getattr(func, "__func__", func), ASYNC_ATTR, False))


class Calls:
    def __init__(self, agent: "Agent"):
        self.agent = agent
        self._running = 0
        self._lock = threading.Lock()

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
    ) -> torch.futures.Future:
        """Sends a call; the future holds the decoded result (or, for remote(), None once the owner has it)."""
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__}")
        ctx = self.agent.contexts.current()
        value, attachments = self.agent.codec.encode((func, tuple(args or ()), dict(kwargs or {})), to.id, ctx)
        call = pb.Call(function=value, context_id=ctx.id if ctx else 0, create_rref=create_rref, creator_fork=creator_fork)
        result = torch.futures.Future()
        self.agent.send_request(
            to.id, pb.Request(call=call), attachments, self.agent.timeout(timeout), self._completion(result, to.id, ctx)
        )
        return result

    def fetch(self, rref: RRef, timeout: float = UNSET_TIMEOUT) -> torch.futures.Future:
        """The value of ``rref``, copied from its owner."""
        ctx = self.agent.contexts.current()
        body = pb.FetchRRef(rref_id=rref._id, context_id=ctx.id if ctx else 0)
        result = torch.futures.Future()
        complete = self._completion(result, rref._owner, ctx, rref._created)
        self.agent.send_request(rref._owner, pb.Request(fetch_rref=body), (), self.agent.timeout(timeout), complete)
        return result

    def _completion(self, result: torch.futures.Future, src: int, ctx, creation: Optional[torch.futures.Future] = None):
        """Decodes a response into ``result``, in the thread that reads it."""

        def complete(response, attachments, error) -> None:
            if error is not None:
                if creation is not None and creation.done() and failure(creation) is not None:
                    # remote() failed on the owner: its error is the one to report, as torch's to_here does
                    error = failure(creation)
                result.set_exception(error)
                return
            try:
                value = None
                if response.WhichOneof("body") == "value":
                    value = self.agent.codec.decode(response.value, attachments, src, ctx)
                if ctx is not None and response.context_peers:
                    ctx.learn(r for r in response.context_peers if r != self.agent.rank)
            except BaseException as exc:
                result.set_exception(exc)
                return
            result.set_result(value)

        return complete

    # ------------------------------------------------------------------ incoming

    def handle_call(self, link, call: pb.Call, attachments) -> Optional[Deferred]:
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
            self._start(ctx, func, args, kwargs, functools.partial(_settle, owned.value))
            return None  # the owner has the rref: that is all remote() waits for
        reply = Deferred()
        self._start(ctx, func, args, kwargs, functools.partial(self._encode_reply, reply, peer, ctx))
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

    def _encode_reply(self, reply: Deferred, peer: int, ctx, outcome) -> None:
        if not isinstance(outcome, BaseException):
            try:
                encoded, attachments = self.agent.codec.encode(outcome, peer, ctx)
                response = pb.Response(value=encoded)
                if ctx is not None:
                    response.context_peers.extend(ctx.participants() - {peer})
                outcome = (response, attachments)
            except BaseException as exc:
                outcome = exc
        reply.resolve(outcome)

    def _start(self, ctx, func, args, kwargs, deliver) -> None:
        """Runs the call on a worker thread; ``deliver`` gets its result or exception, once."""
        with self._lock:
            self._running += 1

        def finish(outcome) -> None:
            try:
                deliver(outcome)
            finally:
                with self._lock:
                    self._running -= 1

        contexts = self.agent.contexts

        def task() -> None:
            try:
                previous = contexts.swap(ctx)
                try:
                    result = func(*args, **kwargs)
                finally:
                    contexts.swap(previous)
                if isinstance(result, AsyncReturn):
                    result = result.future
                elif not is_async(func):
                    finish(result)
                    return
                if not isinstance(result, torch._C.Future):  # .then() returns the C base class
                    raise TypeError(
                        f"{getattr(func, '__qualname__', func)} is decorated with @async_execution but returned "
                        f"{type(result).__name__}, not a torch.futures.Future"
                    )
            except BaseException as exc:
                finish(exc)
                return
            result.add_done_callback(lambda f: finish(failure(f) or f.value()))

        try:
            self.agent.submit(task)
        except RuntimeError:
            finish(errors.Unavailable(f"{self.agent.name} is shutting down"))

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no incoming call is running here (only shutdown asks, so it polls)."""
        end = time.monotonic() + timeout
        while self._running and time.monotonic() < end:
            time.sleep(0.01)
        return not self._running
