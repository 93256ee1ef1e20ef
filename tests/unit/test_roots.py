"""A backward pass's roots are checked as torch checks them, with messages code can match on."""

import re

import pytest
import torch

from distautograd.engine.roots import validate_roots


def test_good_roots_come_back_as_a_list():
    x = torch.ones(2, requires_grad=True)
    loss = x.sum()
    assert validate_roots((loss,)) == [loss]
    wide = x * 2
    assert validate_roots([wide], scalars=False) == [wide]


@pytest.mark.parametrize("roots, kind", [(torch.ones(1), "Tensor"), (None, "NoneType"), ({"a": 1}, "dict")])
def test_roots_must_be_a_list(roots, kind):
    with pytest.raises(TypeError, match=re.escape(
            f"backward(): incompatible function arguments: roots must be a list of tensors, got {kind}")):
        validate_roots(roots)


def test_an_empty_list_is_torchs_error():
    with pytest.raises(RuntimeError, match=r"^No tensors provided for gradient computation\.$"):
        validate_roots([])


def test_each_root_must_be_a_tensor():
    loss = torch.ones(1, requires_grad=True).sum()
    with pytest.raises(TypeError, match=re.escape("roots must be tensors; root 1 is float")):
        validate_roots([loss, 1.0])


def test_a_root_must_require_grad():
    with pytest.raises(RuntimeError, match=re.escape(
            "requires_grad not set on root 0: it does not depend on any tensor that requires grad, so there "
            "is nothing to differentiate")):
        validate_roots([torch.ones(())])


def test_without_gradients_given_every_root_is_a_scalar_and_the_message_says_what_to_do():
    wide = torch.ones(2, 3, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match=re.escape(
            "root 0 of shape (2, 3) is not a scalar, all roots need to be scalar: reduce it first, e.g. loss.sum()")):
        validate_roots([wide])
    with pytest.raises(RuntimeError, match="is not a scalar"):
        validate_roots([wide], True)


def test_a_leaf_is_not_a_root():
    leaf = torch.ones((), requires_grad=True)
    with pytest.raises(RuntimeError, match=re.escape(
            "root 0 does not have a valid gradient function: it is a leaf tensor; a root must be computed from "
            "the tensors whose gradients you want")):
        validate_roots([leaf])
