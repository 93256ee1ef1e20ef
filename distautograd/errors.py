"""Exceptions for every failure the runtime reports, and their mapping to and from the wire."""

from __future__ import annotations

import builtins
import traceback
from typing import Optional

import grpc

from distautograd.protocol.v1 import messages_pb2 as pb


class RpcError(RuntimeError):
    """A call failed; ``code`` is the gRPC status it travels as.

    A subclass of RuntimeError, as torch.distributed.rpc raises RuntimeError for failed calls.
    """

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, worker: Optional[str] = None, remote_traceback: str = ""):
        super().__init__(message)
        self.worker = worker
        self.remote_traceback = remote_traceback


class InvalidArgument(RpcError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDenied(RpcError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(RpcError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(RpcError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFound(RpcError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RpcError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(RpcError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(RpcError):
    """The peer is unreachable: it died, left, or its connection broke."""

    code = grpc.StatusCode.UNAVAILABLE


class Unreachable(Unavailable):
    """The peer stopped answering — no heartbeat, or a connection that timed out — but is not known
    to be dead: it may come back, and nothing it holds or that is held for it is released."""


class Aborted(RpcError):
    code = grpc.StatusCode.ABORTED


class Internal(RpcError):
    code = grpc.StatusCode.INTERNAL


class DeadlineExceeded(RpcError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class RemoteError(RpcError):
    """An exception raised by user code on another worker whose type cannot be rebuilt here."""


_BY_CODE = {cls.code: cls for cls in RpcError.__subclasses__() if cls is not RemoteError}
_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def failure(future) -> Optional[BaseException]:
    """The exception a completed future (torch's) holds, or None."""
    try:
        future.value()
    except BaseException as exc:
        return exc
    return None


def status_code(value: int) -> grpc.StatusCode:
    return _CODE_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


def for_status(code: grpc.StatusCode) -> type[RpcError]:
    """The exception class that stands for a gRPC status code."""
    return _BY_CODE.get(code, RpcError)


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def to_proto(exc: BaseException, worker: str) -> pb.Error:
    """Describes an exception raised here so the caller can re-raise it."""
    if isinstance(exc, RpcError):
        # Already a description of a failure somewhere (maybe further down a chain of calls): keep
        # where it happened first, and a traceback only if it carries one from user code. This
        # runtime's own traceback would tell a user nothing (and a worker that died raised nothing).
        return pb.Error(
            code=exc.code.value[0],
            message=str(exc),
            remote_type=qualified_name(type(exc)),
            remote_traceback=exc.remote_traceback,
            worker=exc.worker or worker,
        )
    return pb.Error(
        code=grpc.StatusCode.UNKNOWN.value[0],
        message=_message(exc),
        remote_type=qualified_name(type(exc)),
        remote_traceback=_format(exc),
        worker=worker,
    )


def from_proto(error: pb.Error, resolve_type=None) -> BaseException:
    """Rebuilds the exception a peer described.

    Errors raised by the runtime come back as the matching RpcError subclass. Exceptions raised by
    user code come back with their own type when ``resolve_type`` (the allowlist) can load it and it
    can be built from a message, and as RemoteError otherwise. The message names the worker and
    carries the remote traceback.
    """
    code = status_code(error.code)
    where = _where(error.worker)
    text = error.message
    if error.remote_traceback:
        text = f"{text}\n\nRaised on {where}; remote traceback:\n{error.remote_traceback.rstrip()}"
    elif code != grpc.StatusCode.UNAVAILABLE and error.worker and f"'{error.worker}'" not in text:
        text = f"{text} (on {where})"  # an Unavailable names the worker that went, and it raised nothing
    kind = _resolve(error.remote_type, resolve_type)
    if code != grpc.StatusCode.UNKNOWN or kind is None or issubclass(kind, RpcError):
        cls = kind if kind is not None and issubclass(kind, RpcError) else for_status(code)
        if code == grpc.StatusCode.UNKNOWN and cls is RpcError:
            cls = RemoteError
        return cls(text, worker=error.worker or None, remote_traceback=error.remote_traceback)
    try:
        exc = kind(text)
    except Exception as exc:
        return RemoteError(
            f"{error.remote_type}: {text}\n\n(it could not be rebuilt here from its message: {exc!r}. Original "
            f"exception on remote side was {error.remote_type}: {error.message})",
            worker=error.worker or None, remote_traceback=error.remote_traceback)
    exc.worker = error.worker or None
    exc.remote_traceback = error.remote_traceback
    return exc


# Raised where torch's RPC hands the caller a RuntimeError: a TorchScript function's error (whose own
# type, torch.jit.Error, is no RuntimeError) arrives as one, message and all.
_AS_RUNTIME_ERROR = {"torch.jit.Error"}


def _resolve(name: str, resolve_type) -> Optional[type]:
    module, _, qualname = name.rpartition(".")
    if not module or name in _AS_RUNTIME_ERROR:
        return None
    if module == "builtins":
        kind = getattr(builtins, qualname, None)
    elif module.startswith("distautograd.") and qualname in globals():
        kind = globals()[qualname]
    elif resolve_type is not None:
        try:
            kind = resolve_type(module, qualname)
        except Exception:
            return None
    else:
        return None
    if isinstance(kind, type) and issubclass(kind, BaseException):
        return kind
    return None


def _passed_on(exc: BaseException) -> bool:
    """Whether ``exc`` was rebuilt here from a peer's description (from_proto) and is passing on up a chain of calls."""
    return getattr(exc, "remote_traceback", None) is not None and len(exc.args) == 1 and isinstance(exc.args[0], str)


def _message(exc: BaseException) -> str:
    """What the caller rebuilds ``exc`` from: its str(), except for one passing on, whose message as it came
    goes on (KeyError's str() quotes it, and would quote and escape it again at every worker it passed)."""
    return exc.args[0] if _passed_on(exc) else str(exc)


def _format(exc: BaseException) -> str:
    """The traceback as Python prints it; for an exception passing on, its last line names it without its
    message, which already carries the traceback it came with (else each worker would copy it all again)."""
    if not _passed_on(exc):
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else qualified_name(kind)  # as Python prints it
    frames = "".join(traceback.format_tb(exc.__traceback__))
    where = _where(getattr(exc, "worker", None))
    return f"Traceback (most recent call last):\n{frames}{name}: as raised on {where}, above\n"


def _where(worker: Optional[str]) -> str:
    """The worker an error came from, as its messages name it."""
    return f"worker '{worker}'" if worker else "a remote worker"
