"""What RRef proxies and RRef.backward run on the owner."""

from __future__ import annotations

from typing import Any

from distautograd.errors import PermissionDenied
from distautograd.runtime.calls import AsyncReturn, is_async
from distautograd.encoding.pickling import trusted_global


@trusted_global
def invoke_method(rref, name: str, args: tuple, kwargs: dict) -> Any:
    """Calls ``name`` on the owner's value. Private and dunder attributes (except ``__call__``) are
    refused: through them a caller could reach any global of the owner's process."""
    if not isinstance(name, str) or (name.startswith("_") and name != "__call__"):
        raise PermissionDenied(f"RRef proxies only call public methods; refused {name!r}")
    method = getattr(rref.local_value(), name)
    result = method(*args, **kwargs)
    return AsyncReturn(result) if is_async(method) else result


@trusted_global
def rref_backward(rref, context_id: int, retain_graph: bool) -> None:
    value = rref.local_value()
    if context_id == -1:
        value.backward(retain_graph=retain_graph)
    else:
        from distautograd.autograd import backward

        backward(context_id, [value], retain_graph=retain_graph)
