"""gradcheck and gradgradcheck across workers, with real processes, against torch's own verdicts."""

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError

from distautograd import autograd as dist_autograd
from distautograd import rpc
from tests.helpers import higher

pytestmark = pytest.mark.usefixtures("trainer")


def across(x, w):
    """A function that calls two workers: x -> worker1 (a layer with weights there) -> worker2 (cube)."""
    h = rpc.rpc_sync("worker1", higher.layer, args=(x, 7))
    return rpc.rpc_sync("worker2", higher.cube, args=(h * w,))


def inputs():
    g = torch.Generator().manual_seed(5)
    return (torch.randn(2, 5, dtype=torch.float64, generator=g, requires_grad=True),
            torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True))


def test_a_correct_function_across_workers_passes_as_torch_would_pass_it():
    assert dist_autograd.gradcheck(across, inputs())
    assert torch.autograd.gradcheck(lambda x, w: higher.cube(higher.layer(x, 7) * w), inputs())


def test_a_wrong_backward_on_a_remote_worker_is_caught_and_located():
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)

    def f(x):
        return rpc.rpc_sync("worker3", higher.wrong_square, args=(x * 1.5,))

    with pytest.raises(GradcheckError) as err:
        dist_autograd.gradcheck(f, (x,))
    text = str(err.value)
    assert text.startswith("Jacobian mismatch for output 0 with respect to input 0,")
    assert "worst at output 0 element [0] with respect to input 0 element [0]" in text
    assert "numerical 2.25" in text and "analytical 2.4" in text  # d/dx (1.5x)^2 at 0.5 = 2.25; wrong: +0.15
    assert "crossed trainer, worker3" in text
    assert dist_autograd.gradcheck(f, (x,), raise_exception=False) is False
    with pytest.raises(GradcheckError):  # torch finds the same fault in one process
        torch.autograd.gradcheck(lambda x: higher.wrong_square(x * 1.5), (x,))


def test_gradgradcheck_across_workers_and_its_failure():
    assert dist_autograd.gradgradcheck(across, inputs())
    x = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)

    def f(x):  # first order right, second order wrong
        return rpc.rpc_sync("worker3", higher.cube_wrong_twice, args=(x,))

    assert dist_autograd.gradcheck(f, (x,))
    assert torch.autograd.gradcheck(higher.cube_wrong_twice, (x,))
    with pytest.raises(GradcheckError, match="Jacobian mismatch for output 0 with respect to input 0") as err:
        dist_autograd.gradgradcheck(f, (x,))
    assert "worker3" in str(err.value)
    assert not torch.autograd.gradgradcheck(higher.cube_wrong_twice, (x,), raise_exception=False)


def test_options_torch_has_that_cannot_cross_workers_are_refused_clearly():
    with pytest.raises(NotImplementedError, match="check_forward_ad are not supported across workers"):
        dist_autograd.gradcheck(across, inputs(), check_forward_ad=True)
    with pytest.raises(TypeError, match="unexpected keyword"):
        dist_autograd.gradcheck(across, inputs(), no_such_option=1)
    with pytest.raises(NotImplementedError, match="fast_mode are not supported across workers"):
        dist_autograd.gradcheck(across, inputs(), fast_mode=True)
    assert dist_autograd.gradcheck(across, inputs(), fast_mode=False)  # False is torch's default: accepted


def test_complex_inputs_are_refused_clearly():
    x = torch.randn(3, dtype=torch.complex128, requires_grad=True)
    with pytest.raises(NotImplementedError, match="complex inputs are not supported"):
        dist_autograd.gradcheck(lambda v: rpc.rpc_sync("worker1", torch.sin, args=(v,)), (x,))
