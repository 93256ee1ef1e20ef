"""Leaves accumulating into a context through torch's AccumulateGrad (engine/slots.py, and the core's
leaf_slots.cpp on the native path): the context gets the gradient, the user's ``.grad`` stays theirs,
hooks see what a local backward would, and an error in the engine puts everything back."""

import threading
import types

import pytest
import torch
from torch.autograd.graph import get_gradient_edge

from distautograd import native
from distautograd.engine import execution, nodes, slots
from distautograd.engine.slots import GradStore

pytestmark = pytest.mark.usefixtures("path")  # tests/unit/conftest.py: every test on both paths


def wave(root, grad, leaves, store, retain_graph=False):
    """One wave from ``root`` (a tensor) with ``grad`` to ``leaves`` (tensors)."""
    accumulators = [get_gradient_edge(leaf).node for leaf in leaves]
    return execution.run_wave([(get_gradient_edge(root), grad)], accumulators, [], store, retain_graph, False)


def test_leaves_accumulate_into_the_store_across_waves_and_keep_their_own_grad():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([0.5], requires_grad=True)
    own = torch.tensor([100.0, 200.0])
    w.grad = own
    store = GradStore()
    for _ in range(2):
        y = w * 3 + b
        wave(y, torch.tensor([1.0, 2.0]), [w, b], store)
    assert w.grad is own and b.grad is None
    assert torch.equal(store.grads[w], torch.tensor([6.0, 12.0])) and torch.equal(store.grads[b], torch.tensor([6.0]))


def test_one_gradient_reaching_two_leaves_is_the_buffer_of_neither():
    """A local backward lets the second leaf keep the very tensor the backward made for both; torch's
    distributed engine copies it for each, and so must a wave (the copying pre-hook)."""
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([3.0, 4.0], requires_grad=True)
    s = a + b  # its backward hands one tensor to both leaves
    made = []
    s.register_hook(lambda grad: made.append(grad.data_ptr()))  # the address only: holding it would copy anyway
    store = GradStore()
    wave(s * 2, torch.ones(2), [a, b], store)
    assert torch.equal(store.grads[a], torch.full((2,), 2.0)) and torch.equal(store.grads[b], torch.full((2,), 2.0))
    addresses = {store.grads[a].data_ptr(), store.grads[b].data_ptr()}
    assert made[0] not in addresses and len(addresses) == 2


def test_hooks_see_the_contexts_gradient_as_a_local_backward_shows_them_dot_grad():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    w.register_post_accumulate_grad_hook(lambda tensor: seen.append(tensor.grad.clone()))
    w.register_hook(lambda grad: grad * 10)
    store = GradStore()
    for _ in range(2):
        wave(w * 1.0, torch.ones(2), [w], store)
    assert [g.tolist() for g in seen] == [[10.0, 10.0], [20.0, 20.0]] and w.grad is None


def test_an_error_in_a_hook_is_raised_and_puts_back_the_slots_and_the_lock():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([3.0, 4.0], requires_grad=True)
    own = torch.tensor([7.0, 7.0])
    a.grad = own
    store = GradStore()
    wave(a * 1.0 + b, torch.ones(2), [a, b], store)
    before = {leaf: grad.clone() for leaf, grad in store.grads.items()}

    def boom(grad):
        raise KeyError("a hook failed")

    handle = b.register_hook(boom)
    with pytest.raises(KeyError, match="a hook failed"):
        wave(a * 1.0 + b, torch.ones(2), [a, b], store)
    handle.remove()
    assert a.grad is own and b.grad is None
    assert all(torch.equal(store.grads[leaf], grad) for leaf, grad in before.items())
    taken = []
    other = threading.Thread(target=lambda: taken.append(slots.LOCK.acquire(timeout=5) and slots.LOCK.release()))
    other.start()
    other.join(10)
    assert taken == [None]  # another thread can take the lock: the wave let it go
    wave(a * 1.0 + b, torch.ones(2), [a, b], store)  # and runs as before: no copying hook was left behind
    assert torch.equal(store.grads[a], torch.full((2,), 2.0)) and store.grads[a].data_ptr() != store.grads[b].data_ptr()


def test_a_gradient_of_the_wrong_shape_fails_with_torchs_message_and_changes_nothing():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    store = GradStore()
    with pytest.raises(RuntimeError, match="shape"):
        wave(w * 2, torch.ones(3), [w], store)
    assert len(store) == 0 and w.grad is None


def test_a_stored_gradient_that_no_longer_fits_its_tensor_fails_as_dot_grad_would():
    """A context's gradient of another dtype than its tensor (changed between two passes): torch's
    own check of ``.grad`` refuses it, on both paths, and the wave changes nothing."""
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    store = GradStore()
    store.grads[w] = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="assign a gradient with dtype 'double'"):
        wave(w * 2, torch.ones(2), [w], store)
    assert w.grad is None and store.grads[w].dtype == torch.float64
    assert not slots.LOCK._is_owned()


def test_a_warning_torch_raises_inside_the_engine_is_a_python_warning():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    y = torch.ops.aten._test_warn_in_autograd(w * 1.0)  # its backward warns in C++ (TORCH_WARN)
    with pytest.warns(UserWarning, match="Warn from backward"):
        wave(y, torch.ones(2), [w], GradStore())


def test_waves_of_two_threads_on_the_same_leaves_each_fill_their_own_store():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    stores = [GradStore(), GradStore()]
    errors = []

    def run(store, scale):
        try:
            for _ in range(200):
                wave(w * scale, torch.ones(2), [w], store)
        except BaseException as exc:  # reported below: a thread's error must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(store, scale)) for store, scale in zip(stores, (1.0, 2.0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and w.grad is None
    assert torch.equal(stores[0].grads[w], torch.full((2,), 200.0))
    assert torch.equal(stores[1].grads[w], torch.full((2,), 400.0))


def test_the_core_runs_every_wave_on_the_native_path_and_none_on_the_python_path(path, monkeypatch):
    """Leaves alone, a recv node alone, both: the same results either way, so only the calls tell."""
    if native.core is None:
        pytest.skip("the compiled core is not built")
    calls = []
    run_wave = native.core.run_wave
    monkeypatch.setattr(native.core, "run_wave", lambda *args: calls.append(1) or run_wave(*args))
    w = torch.tensor([1.0], requires_grad=True)
    wave(w * 2, torch.ones(1), [w], GradStore())
    (x,), anchor = nodes.make_recv([torch.ones(1)], [types.SimpleNamespace(message_id=5, anchor=None)])
    x.grad_fn.points[0].anchor = anchor
    y = x * w
    got = execution.run_wave([(get_gradient_edge(y), torch.ones(1))], [], [x.grad_fn], GradStore(), True, False)
    assert torch.equal(got[5], w.detach())
    store = GradStore()
    got = execution.run_wave([(get_gradient_edge(y), torch.ones(1))], [get_gradient_edge(w).node], [x.grad_fn], store,
                             False, False)
    assert torch.equal(got[5], w.detach()) and torch.equal(store.grads[w], torch.ones(1))
    assert calls == ([1, 1, 1] if path == "native" else [])


def test_the_cores_wave_refuses_what_is_not_a_wave_and_says_what(path):
    if path != "native":
        pytest.skip("the core's own entry")
    w = torch.tensor([1.0], requires_grad=True)
    y = w * 2
    root, leaf = get_gradient_edge(y), get_gradient_edge(w).node
    with pytest.raises(ValueError, match="one gradient per root"):
        native.core.run_wave([root], [], [leaf], [], {}, slots.LOCK, False)
    with pytest.raises(TypeError, match="a leaf must be an autograd node"):
        native.core.run_wave([root], [torch.ones(1)], [object()], [], {}, slots.LOCK, False)
    with pytest.raises(TypeError, match="a leaf of a wave must be an AccumulateGrad node"):
        native.core.run_wave([root], [torch.ones(1)], [y.grad_fn], [], {}, slots.LOCK, False)
    store = GradStore()
    wave(w * 2, torch.ones(1), [w], store)  # and a wave runs after them as before
    assert torch.equal(store.grads[w], torch.full((1,), 2.0)) and not slots.LOCK._is_owned()
