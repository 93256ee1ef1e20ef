"""Anomaly detection across workers, with real processes: the error names the worker, the node,
torch's formula and the forward line on that worker; off, nothing is checked or recorded."""

import pytest
import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc
from tests.helpers import remote

pytestmark = pytest.mark.usefixtures("trainer")


def test_a_nan_from_a_custom_function_on_a_worker_names_worker_node_and_forward_line():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    with dist_autograd.context(detect_anomaly=True) as context_id:
        y = rpc.rpc_sync("worker2", remote.doubled_badly, args=(x * 1,))
        loss = rpc.rpc_sync("worker1", torch.exp, args=(y,)).sum()
        with pytest.raises(RuntimeError) as err:
            dist_autograd.backward(context_id, [loss])
    text = str(err.value)
    rank = rpc.get_worker_info("worker2").id
    assert text.startswith(f"Error on Node {rank}: Function 'NanInBackwardBackward' returned nan values in its 0th output.")
    assert type(err.value.__cause__).__name__ == "AnomalyError"
    assert "On worker 'worker2'" in text
    assert "custom autograd.Function tests.helpers.remote.NanInBackward" in text
    assert "return NanInBackward.apply(x)  # the user's own line" in text, text
    stack = text.split("Forward call that made the node")[1].split("\n\n")[0]
    assert "distautograd" not in stack and "threading" not in stack, stack  # the user's frames only


def test_a_builtin_node_gets_torchs_formula_and_detect_anomaly_in_the_caller_turns_it_on():
    x = torch.tensor([0.0, 4.0], requires_grad=True)
    with torch.autograd.detect_anomaly():
        with dist_autograd.context() as context_id:
            loss = rpc.rpc_sync("worker1", remote.sqrt_times_zero, args=(x,)).sum()
            with pytest.raises(RuntimeError) as err:
                dist_autograd.backward(context_id, [loss])
    text = str(err.value)
    assert "Function 'SqrtBackward0' returned nan values in its 0th output." in text
    assert "On worker 'worker1'" in text and "the gradient for 'self'" in text
    assert "torch's formula for 'self' (sqrt(Tensor self) -> Tensor): grad / (2 * result.conj())" in text
    assert "return x.sqrt() * 0" in text


def test_inf_is_caught_only_when_asked():
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    with dist_autograd.context(detect_anomaly=True) as context_id:
        loss = rpc.rpc_sync("worker3", remote.reciprocal_sqrt, args=(x,)).sum()
        dist_autograd.backward(context_id, [loss], retain_graph=True)  # NaN only: Inf passes
        assert torch.isinf(dist_autograd.get_gradients(context_id)[x][0])
    with dist_autograd.context(detect_anomaly=True, check_inf=True) as context_id:
        loss = rpc.rpc_sync("worker3", remote.reciprocal_sqrt, args=(x,)).sum()
        with pytest.raises(RuntimeError, match="Function 'SqrtBackward0' returned inf values in its 0th output"):
            dist_autograd.backward(context_id, [loss])


def test_off_nothing_is_checked_and_the_nan_arrives():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    with dist_autograd.context() as context_id:
        y = rpc.rpc_sync("worker2", remote.doubled_badly, args=(x * 1,))
        dist_autograd.backward(context_id, [y.sum()])
        grad = dist_autograd.get_gradients(context_id)[x]
    assert grad[0] == 2 and torch.isnan(grad[1])


def test_on_the_worker_records_forward_stacks_off_it_records_nothing():
    x = torch.ones(2, requires_grad=True)
    with dist_autograd.context(detect_anomaly=True):
        assert rpc.rpc_sync("worker2", remote.records_forward_stack, args=(x,)) == (True, True)
    with dist_autograd.context():
        assert rpc.rpc_sync("worker2", remote.records_forward_stack, args=(x,)) == (False, False)
    assert rpc.rpc_sync("worker2", remote.records_forward_stack, args=(x,)) == (False, False)  # no context
