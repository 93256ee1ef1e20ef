"""Anomaly detection across workers: forward stacks recorded where nodes are made, every node's output checked.

A context asks for it with ``context(detect_anomaly=True)``, or because its calls are made under
``torch.autograd.detect_anomaly()``. Then every call of the context runs in torch's anomaly mode on
its worker (torch keeps the forward stack of each node it makes there), and during a pass every
participant checks what each node returns: the first NaN (or Inf, when asked) stops the pass
everywhere, and the caller gets one error naming the worker, the node, torch's formula for the bad
output, and the forward stack on that worker. Nothing of this runs when it is off.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, List, Optional

import torch

from distautograd.engine.nodes import is_leaf, recv_points
from distautograd.views import formulas

NAN = 1  # check for NaN (and record forward stacks)
INF = 2  # check for Inf as well

_INTERNAL = tuple(os.path.dirname(p) + os.sep for p in (
    os.path.dirname(__file__), torch.__file__, contextlib.__file__))  # frames a user never wrote


class AnomalyError(RuntimeError):
    """A backward function returned NaN or Inf; the message says where it came from."""


def requested(ctx_anomaly: int) -> int:
    """The context's flags, with NaN checks added when the calling thread runs in torch's anomaly mode."""
    if torch.is_anomaly_enabled():
        ctx_anomaly |= NAN
    return ctx_anomaly


@contextlib.contextmanager
def recording(flags: int) -> Iterator[None]:
    """Runs a call of the context in torch's anomaly mode, so its nodes keep their forward stacks."""
    if not flags or torch.is_anomaly_enabled():
        yield
        return
    with torch.autograd.set_detect_anomaly(True):
        yield


def watch(nodes, flags: int, worker: str) -> List[Callable[[], None]]:
    """Checks every output of every node (but leaves and recv points) while a pass runs; returns
    the hook handles to remove after."""
    if not flags:
        return []
    handles = []
    for node in nodes:
        if is_leaf(node) or recv_points(node) is not None:
            continue
        handles.append(node.register_hook(_checker(node, flags, worker)))
    return handles


def _checker(node, flags: int, worker: str):
    def check(grad_inputs, grad_outputs):
        for index, grad in enumerate(grad_inputs):
            if grad is None or not grad.is_floating_point() and not grad.is_complex():
                continue
            bad = "nan" if torch.isnan(grad).any() else ("inf" if flags & INF and torch.isinf(grad).any() else None)
            if bad:
                raise AnomalyError(message(node, index, bad, worker))
    return check


def message(node, index: int, bad: str, worker: str) -> str:
    """torch's words for the failure first (code matches on them), then where it came from."""
    name = type(node).__name__
    arg = formulas.input_name(node, index)
    formula = formulas.of_node(node)
    lines = [f"Function '{name}' returned {bad} values in its {index}th output.",
             f"On worker '{worker}': node {name}, output {index} (the gradient for '{arg}')."]
    if formula is not None:
        lines.append(f"torch's formula for '{arg}' ({formula.op}): {formula.formulas.get(arg, '?')}")
    else:
        lines.append(formulas.describe(node))
    stack = forward_stack(node)
    lines.append(f"Forward call that made the node, on worker '{worker}':\n{stack}" if stack else
                 "No forward stack was recorded for this node: it was made outside the context's anomaly mode.")
    return "\n".join(lines)


def forward_stack(node) -> Optional[str]:
    """The stack torch recorded when it made ``node`` (anomaly mode), without frames of the runtime,
    torch or the standard library: it ends at the user's own line."""
    recorded = getattr(node, "metadata", {}).get("traceback_")
    if not recorded:
        return None
    frames = [frame for frame in recorded if not _is_internal(frame)]
    return "".join(frames or recorded).rstrip()


def _is_internal(frame: str) -> bool:
    line = frame.strip().splitlines()[0] if frame.strip() else ""
    path = line.split('"')[1] if line.startswith("File \"") else ""
    return not path or any(path.startswith(prefix) for prefix in _INTERNAL) or "threading.py" in path

