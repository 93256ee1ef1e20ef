"""gradcheck and gradgradcheck for functions that call other workers, with torch's arguments and tolerances.

The analytical Jacobian comes from distributed backward passes (one per output element, each in
a context of its own), the numerical one from perturbed forwards (central differences, as torch
computes them). A mismatch raises torch's GradcheckError, saying which input and output element,
both values, and the workers the backward crossed. gradgradcheck checks the gradient of the
gradient: the first-order gradients are computed with ``create_graph=True`` and then checked the
same way, their second-order pass crossing the workers again.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch.autograd.gradcheck import GradcheckError

from distautograd.runtime import current
from distautograd.runtime.contexts import Context

_UNSUPPORTED = ("check_batched_grad", "check_batched_forward_grad", "check_forward_ad", "fast_mode", "masked",
                "check_fwd_over_rev", "gen_non_contig_grad_outputs")


def gradcheck(func: Callable, inputs: Union[torch.Tensor, Sequence[torch.Tensor]], *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              raise_exception: bool = True, nondet_tol: float = 0.0, check_undefined_grad: bool = True,
              check_grad_dtypes: bool = False, check_backward_ad: bool = True, **unsupported) -> bool:
    """As ``torch.autograd.gradcheck``, where ``func`` may call other workers (inside no context of
    its own: each evaluation gets one). ``check_undefined_grad`` is accepted and has nothing to
    check here: every pass starts from a defined scalar root."""
    _refuse_unsupported(unsupported)
    if not check_backward_ad:
        return True
    inputs = _as_tuple(inputs)
    checker = _Checker(func, inputs, eps, atol, rtol, nondet_tol, check_grad_dtypes)
    try:
        return checker.run()
    except GradcheckError:
        if raise_exception:
            raise
        return False


def gradgradcheck(func: Callable, inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
                  grad_outputs: Optional[Union[torch.Tensor, Sequence[torch.Tensor]]] = None, *, eps: float = 1e-6, atol: float = 1e-5,
                  rtol: float = 1e-3, raise_exception: bool = True, nondet_tol: float = 0.0,
                  check_undefined_grad: bool = True, check_grad_dtypes: bool = False,
                  check_rev_over_rev: bool = True, **unsupported) -> bool:
    """As ``torch.autograd.gradgradcheck``: checks the gradients of ``func``'s gradients, each first-order
    pass run with ``create_graph=True`` across the workers ``func`` calls."""
    _refuse_unsupported(unsupported)
    if not check_rev_over_rev:
        return True
    inputs = _as_tuple(inputs)
    outputs = _as_tuple(_outside_contexts(func, inputs))
    differentiable = [o for o in outputs if _differentiable(o)]
    if grad_outputs is None:
        grad_outputs = tuple(torch.randn_like(o.detach(), dtype=o.dtype).requires_grad_() for o in differentiable)
    grad_outputs = _as_tuple(grad_outputs)
    if len(grad_outputs) != len(differentiable):
        raise ValueError(f"gradgradcheck: {len(differentiable)} differentiable outputs but {len(grad_outputs)} "
                         "grad_outputs")
    first_order = _FirstOrder(func, len(inputs))
    try:
        return gradcheck(first_order, inputs + grad_outputs, eps=eps, atol=atol, rtol=rtol,
                         raise_exception=raise_exception, nondet_tol=nondet_tol, check_grad_dtypes=check_grad_dtypes)
    finally:
        first_order.close()


class _FirstOrder:
    """f(inputs, grad_outputs) = the first-order gradients of ``func`` (differentiable): what
    gradgradcheck checks. Each evaluation's context stays open until the check is over, since the
    second-order pass goes back through the send points the first order made there."""

    def __init__(self, func: Callable, count: int):
        self.func = func
        self.count = count
        self.contexts: List[Context] = []

    def __call__(self, *values):
        inputs, grad_outputs = values[: self.count], values[self.count:]
        store = current.get().contexts
        ctx = store.detached()
        self.contexts.append(ctx)
        previous = store.swap(ctx)
        try:
            outputs = [o for o in _as_tuple(self.func(*inputs)) if _differentiable(o)]
        finally:
            store.swap(previous)
        root = sum(((o * g).sum() for o, g in zip(outputs, grad_outputs)), torch.zeros((), dtype=torch.float64))
        wanted = [x for x in inputs if _differentiable(x)]
        if not root.requires_grad:
            return tuple(torch.zeros_like(x) for x in wanted)
        current.get().backward.backward(ctx, [root], retain_graph=True, create_graph=True)
        found = store.get(ctx.id).gradients()
        return tuple(found.get(x, torch.zeros_like(x)) for x in wanted)

    def close(self) -> None:
        store = current.get().contexts
        contexts, self.contexts = self.contexts, []
        for ctx in contexts:
            store.exit(ctx)


class _Checker:
    def __init__(self, func, inputs, eps, atol, rtol, nondet_tol, check_grad_dtypes):
        self.func, self.inputs = func, inputs
        self.eps, self.atol, self.rtol, self.nondet_tol = eps, atol, rtol, nondet_tol
        self.check_grad_dtypes = check_grad_dtypes
        self.wrt = [i for i, x in enumerate(inputs) if _differentiable(x)]
        self.crossed: set = set()
        if not self.wrt:
            raise ValueError("gradcheck expects at least one input tensor to require gradient, but none of the "
                             "them have requires_grad=True.")
        for i in self.wrt:
            if inputs[i].is_complex():
                raise NotImplementedError("distautograd.autograd.gradcheck: complex inputs are not supported yet")
            if inputs[i].dtype != torch.float64:
                warnings.warn(f"Input #{i} requires gradient and is not a double precision floating point. As a "
                              "result, the check may fail due to lack of precision.", UserWarning, stacklevel=3)

    def run(self) -> bool:
        outputs = _as_tuple(_outside_contexts(self.func, self.inputs))
        self.outs = [k for k, o in enumerate(outputs) if _differentiable(o)]
        if not self.outs:
            raise GradcheckError("gradcheck: no output of the function requires grad, so there is nothing to check")
        numerical = self._numerical(outputs)
        analytical = self._analytical(outputs)
        if self.nondet_tol is not None:
            again = self._analytical(outputs)
            for key in analytical:
                if (analytical[key] - again[key]).abs().max().item() > self.nondet_tol:
                    raise GradcheckError(
                        "Backward is not reentrant, i.e., running backward with same input and grad_output "
                        "multiple times gives different values, although analytical gradient matches numerical "
                        f"gradient.The tolerance for nondeterminism was {self.nondet_tol}." + self._where())
        for (o, i), a in analytical.items():
            n = numerical[(o, i)]
            if not torch.allclose(a, n, self.rtol, self.atol):
                raise GradcheckError(self._mismatch(o, i, a, n, outputs))
        return True

    # ------------------------------------------------------------------ the two Jacobians

    def _numerical(self, outputs) -> dict:
        """(output, input) -> Jacobian [output elements x input elements], by central differences."""
        jac = {(o, i): torch.zeros(outputs[o].numel(), self.inputs[i].numel(), dtype=torch.float64)
               for o in self.outs for i in self.wrt}
        for i in self.wrt:
            x = self.inputs[i]
            for j, index in enumerate(itertools.product(*[range(n) for n in x.shape])):
                with torch.no_grad():
                    original = x[index].item()
                    x[index] = original + self.eps
                plus = _as_tuple(_outside_contexts(self.func, self.inputs))
                with torch.no_grad():
                    x[index] = original - self.eps
                minus = _as_tuple(_outside_contexts(self.func, self.inputs))
                with torch.no_grad():
                    x[index] = original
                for o in self.outs:
                    diff = (plus[o].detach().double() - minus[o].detach().double()) / (2 * self.eps)
                    jac[(o, i)][:, j] = diff.reshape(-1)
        return jac

    def _analytical(self, outputs) -> dict:
        """(output, input) -> Jacobian, one distributed backward per output element."""
        jac = {(o, i): torch.zeros(outputs[o].numel(), self.inputs[i].numel(), dtype=torch.float64)
               for o in self.outs for i in self.wrt}
        agent = current.get()
        store = agent.contexts
        for o in self.outs:
            for k in range(outputs[o].numel()):
                ctx = store.detached()
                previous = store.swap(ctx)
                try:
                    root = _as_tuple(self.func(*self.inputs))[o].reshape(-1)[k]
                    if root.requires_grad:
                        agent.backward.backward(ctx, [root])
                    found = ctx.gradients()
                    self.crossed |= ctx.crossed
                finally:
                    store.swap(previous)
                    store.exit(ctx)
                for i in self.wrt:
                    grad = found.get(self.inputs[i])
                    if grad is None:
                        continue
                    if self.check_grad_dtypes and grad.dtype != self.inputs[i].dtype:
                        raise GradcheckError(f"Gradient has dtype mismatch: input {i} is {self.inputs[i].dtype}, "
                                             f"its gradient {grad.dtype}" + self._where())
                    jac[(o, i)][k, :] = grad.detach().double().reshape(-1)
        return jac

    # ------------------------------------------------------------------ saying what is wrong

    def _mismatch(self, o: int, i: int, a: torch.Tensor, n: torch.Tensor, outputs) -> str:
        excess = (a - n).abs() - (self.atol + self.rtol * n.abs())
        k, j = divmod(int(excess.argmax()), a.shape[1])
        out_index = tuple(int(v) for v in torch.unravel_index(torch.tensor(k), outputs[o].shape)) if outputs[o].dim() else ()
        in_index = tuple(int(v) for v in torch.unravel_index(torch.tensor(j), self.inputs[i].shape)) \
            if self.inputs[i].dim() else ()
        return (f"Jacobian mismatch for output {o} with respect to input {i},\n"
                f"worst at output {o} element {list(out_index)} with respect to input {i} element {list(in_index)}: "
                f"numerical {n[k, j].item():.10g}, analytical {a[k, j].item():.10g} "
                f"(atol {self.atol:g}, rtol {self.rtol:g}){self._where()}\n"
                f"numerical:{n}\nanalytical:{a}\n")

    def _where(self) -> str:
        world = current.get().world
        names = sorted(entry.name for entry in map(world.entry, self.crossed) if entry is not None)
        return f"; the backward passes crossed {', '.join(names)}" if names else ""


def _outside_contexts(func: Callable, inputs: Sequence):
    """``func(*inputs)`` as a plain forward: no context records it (with grad on, as torch's
    gradcheck evaluates it: outputs say whether they require grad, and a function may need autograd)."""
    store = current.get().contexts
    previous = store.swap(None)
    try:
        with torch.enable_grad():
            return func(*inputs)
    finally:
        store.swap(previous)


def _differentiable(value) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad and (value.is_floating_point() or value.is_complex())


def _as_tuple(value) -> Tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _refuse_unsupported(options: dict) -> None:
    unknown = sorted(set(options) - set(_UNSUPPORTED))
    if unknown:
        raise TypeError(f"gradcheck() got unexpected keyword arguments {unknown}")
    wanted = sorted(name for name, value in options.items() if value)
    if wanted:
        raise NotImplementedError(
            f"distautograd.autograd.gradcheck: {', '.join(wanted)} are not supported across workers (forward-mode "
            "and batched gradients do not cross rpc); leave them False")


__all__ = ["gradcheck", "gradgradcheck"]
