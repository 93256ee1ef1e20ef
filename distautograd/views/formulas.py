"""torch's own derivative formula for an autograd node, read from the derivatives.yaml of the installed torch.

torchgen (shipped inside the torch wheel) parses ``derivatives.yaml`` exactly as torch's build did,
so the formulas are right for the torch version in use: ``MulBackward0`` gives, for ``self``,
``mul_tensor_backward(grad, other, self.scalar_type())`` as derivatives.yaml writes it (and
``mul_tensor_backward(grad, other, self_scalar_type)`` as torch compiles it, naming what it saved). Loading takes a second or two, once per
process, and only when a formula is first asked for. Nodes without an entry (custom Functions,
AccumulateGrad, the recv points, view replays) are described by what they are instead.
"""

from __future__ import annotations

import os
import threading
from typing import Dict, List, NamedTuple, Optional

_lock = threading.Lock()
_loaded: Optional[Dict[str, Formula]] = None  # by _table, once


class Formula(NamedTuple):
    """The derivative of one node: its forward op, its inputs in order, and per input the formula."""

    op: str  # the forward function's schema, e.g. "mul.Tensor(Tensor self, Tensor other) -> Tensor"
    inputs: List[str]  # the differentiable inputs, in the order of the node's next_functions
    formulas: Dict[str, str]  # input name -> formula as derivatives.yaml writes it
    compiled: Dict[str, str]  # input name -> as torch compiles it, saved values named as the node keeps them


def _table() -> Dict[str, Formula]:
    """Loaded once: a thread that asks while another loads waits for that load instead of making its own."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = _load()
    return _loaded


def _load() -> Dict[str, Formula]:
    """torch's derivatives.yaml as torchgen reads it: the formula of every node type, by its name."""
    import torchgen
    from torchgen.packaged.autograd.load_derivatives import load_derivatives

    base = os.path.join(os.path.dirname(torchgen.__file__), "packaged")
    infos, _ = load_derivatives(
        os.path.join(base, "autograd", "derivatives.yaml"),
        os.path.join(base, "ATen", "native", "native_functions.yaml"),
        os.path.join(base, "ATen", "native", "tags.yaml"),
    )
    table: Dict[str, Formula] = {}
    for by_key in infos.values():
        for info in by_key.values():
            if not info.op or info.op in table:
                continue
            formulas: Dict[str, str] = {}
            compiled: Dict[str, str] = {}
            for derivative in info.derivatives:
                names = derivative.var_names
                for name in names:
                    joint = "" if len(names) == 1 else f"  [one formula for {', '.join(names)}]"
                    formulas[name] = derivative.original_formula + joint
                    compiled[name] = derivative.formula + joint
            table[info.op] = Formula(str(info.func.func), [b.name for b in info.args_with_derivatives],
                                     formulas, compiled)
    return table


def of(node_name: str) -> Optional[Formula]:
    """The formula of the node type named ``node_name`` (``type(grad_fn).__name__``), or None."""
    return _table().get(node_name)


def of_node(node) -> Optional[Formula]:
    """The formula of ``node``, or None; a node that cannot have one (a custom Function's, a leaf's, a
    recv point's) is told apart without loading the table, which can take seconds inside a pass."""
    name = type(node).__name__
    if hasattr(node, "_forward_cls") or name == "AccumulateGrad" or name.endswith("RecvRpcBackward"):
        return None
    return of(name)


def describe(node) -> str:
    """What a node computes, in one line: its formula per input, or what kind of node it is."""
    name = type(node).__name__
    if name == "AccumulateGrad":
        return "AccumulateGrad: adds the gradient into the leaf (here, into the context)"
    if name.endswith("RecvRpcBackward"):
        return "RecvRpcBackward: each tensor's gradient goes back to the worker the message came from"
    if hasattr(node, "_forward_cls"):
        forward = node._forward_cls
        return f"custom autograd.Function {forward.__module__}.{forward.__qualname__}: its own backward()"
    formula = of(name)
    if formula is not None:
        return "; ".join(f"{arg}: {formula.formulas.get(arg, '(not differentiable)')}" for arg in formula.inputs)
    return f"{name}: no derivatives.yaml entry (a view replay or a node torch builds by hand)"


def input_name(node, index: int) -> str:
    """The name of the node's ``index``-th input (the forward argument its gradient goes to)."""
    formula = of_node(node)
    if formula is not None and index < len(formula.inputs):
        return formula.inputs[index]
    return f"input {index}"
