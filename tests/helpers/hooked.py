"""Programs that use every kind of autograd hook torch offers, written once and run two ways.

Each program takes ``call(fn, *args)``: across workers it is an rpc_sync to worker1 inside a
distributed autograd context, in the oracle it is ``fn(*args)`` in this process. Hooks append
what they saw to ``seen`` of the process they run in, so the two runs can be compared.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch

seen: List[Tuple[str, torch.Tensor]] = []
_weight: Dict[str, object] = {}

Call = Callable[..., torch.Tensor]


def take_seen() -> List[Tuple[str, torch.Tensor]]:
    out = list(seen)
    seen.clear()
    return out


def _note(name: str, value: torch.Tensor) -> None:
    seen.append((name, value.detach().clone()))


def _accumulate_grad_node(leaf: torch.Tensor):
    return leaf.view_as(leaf).grad_fn.next_functions[0][0]


def hooked_weight() -> torch.Tensor:
    """A fresh leaf in this process with a tensor hook, AccumulateGrad node hooks and a
    post-accumulate hook, each noting what it saw."""
    w = torch.linspace(-1.0, 1.0, 12).reshape(3, 4).requires_grad_()
    w.register_hook(lambda g: g * 2)
    node = _accumulate_grad_node(w)
    node.register_prehook(lambda grads: _note("weight node prehook", grads[0]))
    node.register_hook(lambda grad_inputs, grad_outputs: _note("weight node hook", grad_outputs[0]))
    w.register_post_accumulate_grad_hook(lambda p: _note("weight post-accumulate", p.grad))
    _weight["w"], _weight["node"] = w, node  # a leaf holds its AccumulateGrad weakly: keep it alive
    return w


def times_hooked_weight(x: torch.Tensor) -> torch.Tensor:
    """x @ W where W is this process's hooked weight (made on the first call of a run)."""
    return torch.tanh(x @ _weight["w"])


def weight_grad_here(context_id=None):
    """The hooked weight's gradient: from the context when given one, else its .grad."""
    w = _weight["w"]
    if context_id is None:
        return w.grad
    from distautograd import autograd as dist_autograd

    return dist_autograd.get_gradients(context_id).get(w), w.grad


# Programs: each returns (loss, {name: leaf}).
def leaf_hook(call: Call):
    t1 = torch.ones(2, 2, requires_grad=True)
    t2 = torch.full((2, 2), 1.5, requires_grad=True)
    t1.register_hook(lambda g: g * 2)
    return call(torch.matmul, t1, t2).sum(), {"t1": t1, "t2": t2}


def non_leaf_hook_on_a_gradient_from_two_places(call: Call):
    x = torch.arange(1.0, 7.0).requires_grad_()
    y = x * 3
    y.register_hook(lambda g: (_note("y hook", g), g + 1)[1])
    remote_part = call(torch.sin, y)
    return (remote_part * y).sum() + y.sum(), {"x": x}


def node_hooks_on_a_sent_tensor(call: Call):
    x = torch.linspace(0.5, 2.0, 5).requires_grad_()
    y = x.exp()
    y.grad_fn.register_prehook(lambda grads: (grads[0] * 2,))
    y.grad_fn.register_hook(lambda grad_inputs, grad_outputs: _note("exp node hook", grad_inputs[0]))
    return call(torch.cos, y).sum(), {"x": x}


def hooks_on_a_remote_weight(call: Call):
    x = torch.linspace(-2.0, 2.0, 6).reshape(2, 3).requires_grad_()
    out = call(times_hooked_weight, x * 1.5)
    return (out * out).sum(), {"x": x}


def retained_grad_of_a_sent_tensor(call: Call):
    x = torch.arange(1.0, 5.0).requires_grad_()
    y = x.sin()
    y.retain_grad()
    return call(torch.mul, y, y).sum(), {"x": x, "y.grad (retained)": y}


PROGRAMS = [leaf_hook, non_leaf_hook_on_a_gradient_from_two_places, node_hooks_on_a_sent_tensor,
            hooks_on_a_remote_weight, retained_grad_of_a_sent_tensor]


def hook_below_a_round_trip(call: Call):
    """y is neither sent nor received: its gradient is a local part plus a part back from worker1."""
    x = torch.arange(1.0, 5.0).requires_grad_()
    y = x * 3
    y.register_hook(lambda g: (_note("y hook", g), g * 2)[1])
    back = call(torch.sin, y * 2)
    return (back + y).sum(), {"x": x}


PROGRAMS.append(hook_below_a_round_trip)
