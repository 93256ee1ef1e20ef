"""Functions a peer calls run the way torch's RPC runs them, so results match.

Builtin torch operators: with no tensor among the arguments, the operator's overloads are tried in
registration order (``torch.add(1, 1)`` over RPC gives ``2``, an int, as torch's gives; locally it
would give ``tensor(2)``). TorchScript functions given RRefs: TorchScript's RRef type is torch's own
C++ one, which this package's RRefs are not, so the function runs its Python source instead (the
same code: TorchScript is a subset of Python).
"""

from __future__ import annotations

from typing import Any

import torch

from distautograd.encoding.pickling import op_name
from distautograd.runtime.rref import RRef


def call(func, args: tuple, kwargs: dict) -> Any:
    if isinstance(func, torch.jit.ScriptFunction) and _has(RRef, (*args, *kwargs.values())):
        source = getattr(func, "_torchdynamo_inline", None)
        if source is None:
            raise RuntimeError(f"the TorchScript function {func.qualified_name} takes an RRef, so it runs its Python "
                               "source here, and this process has no Python function for it: import its module")
        return source(*args, **kwargs)
    found = op_name(func)
    if found is None or found[0] != "torch":
        return func(*args, **kwargs)
    if not (_has_tensor(args) or _has_tensor(kwargs.values())):
        packet = getattr(torch.ops.aten, func.__name__, None)
        for schema in torch._C._jit_get_schemas_for_operator(f"aten::{func.__name__}") if packet else ():
            if any("Tensor" in str(argument.type) for argument in schema.arguments):
                continue  # torch's RPC does not turn numbers into tensors to match these
            try:
                return getattr(packet, schema.overload_name or "default")(*args, **kwargs)
            except (RuntimeError, TypeError):
                continue  # these arguments do not fit this overload: the next one
    try:
        return func(*args, **kwargs)
    except TypeError as exc:  # arguments no overload takes: torch's RPC reports them so
        raise RuntimeError(f"Overloaded torch operator invoked from Python failed to match any schema: "
                           f"torch.{found[1]}: {exc}") from exc


def _has_tensor(values) -> bool:
    return _has(torch.Tensor, values)


def _has(kind: type, values) -> bool:
    for value in values:
        if isinstance(value, kind):
            return True
        if isinstance(value, (list, tuple)) and _has(kind, value):
            return True
    return False
