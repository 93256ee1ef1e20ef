"""Builtin torch operators a peer calls run the way torch's RPC runs them, so results match: with no tensor
among the arguments, the operator's overloads are tried in registration order (``torch.add(1, 1)`` over
RPC gives ``2``, an int, as torch's gives; locally it would give ``tensor(2)``)."""

from __future__ import annotations

from typing import Any

import torch

from distautograd.encoding.pickling import op_name


def call(func, args: tuple, kwargs: dict) -> Any:
    found = op_name(func)
    if found is None or found[0] != "torch" or _has_tensor(args) or _has_tensor(kwargs.values()):
        return func(*args, **kwargs)
    name = func.__name__
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return func(*args, **kwargs)
    for schema in torch._C._jit_get_schemas_for_operator(f"aten::{name}"):
        if any("Tensor" in str(argument.type) for argument in schema.arguments):
            continue  # torch's RPC does not turn numbers into tensors to match these
        try:
            return getattr(packet, schema.overload_name or "default")(*args, **kwargs)
        except (RuntimeError, TypeError):
            continue  # these arguments do not fit this overload: the next one
    return func(*args, **kwargs)


def _has_tensor(values) -> bool:
    for value in values:
        if isinstance(value, torch.Tensor):
            return True
        if isinstance(value, (list, tuple)) and _has_tensor(value):
            return True
    return False
