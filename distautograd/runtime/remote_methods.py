"""What RRef proxies and RRef.backward run on the owner, and the marks of functions that answer later."""

from __future__ import annotations

from typing import Any

import torch

from distautograd.encoding.allowlist import trusted_global
from distautograd.runtime import current

ASYNC_ATTR = "_distautograd_async_execution"


class AsyncReturn:
    """Returned by a function that runs another, asynchronous one: the call answers when ``future`` does."""

    def __init__(self, future: torch.futures.Future):
        self.future = future


def is_async(func: Any) -> bool:
    return bool(getattr(getattr(func, "__func__", func), ASYNC_ATTR, False))


@trusted_global
def invoke_method(rref, name: str, args: tuple, kwargs: dict) -> Any:
    """Calls ``name`` on the owner's value, if the owner's allowlist lets a peer call it: chains of
    proxy calls must not reach storages, files or process-wide settings (encoding.allowlist).
    A name the value does not have raises AttributeError, as torch's proxies do."""
    value = rref.local_value()
    method = current.get().allowlist.method(value, name)
    result = method(*args, **kwargs)
    return AsyncReturn(result) if is_async(method) else result


@trusted_global
def _rref_typeof_on_owner(rref) -> type:
    """The type of an RRef's value, on its owner (named as torch's, which profiles show)."""
    return type(rref.local_value())


@trusted_global
def rref_backward(rref, context_id: int, retain_graph: bool) -> None:
    value = rref.local_value()
    if not isinstance(value, torch.Tensor):
        raise RuntimeError(f"RRef should contain a tensor for .backward(), but it contains {type(value).__name__}")
    if context_id == -1:
        value.backward(retain_graph=retain_graph)
    else:
        agent = current.get()
        agent.backward.backward(agent.contexts.get(context_id), [value], retain_graph)
