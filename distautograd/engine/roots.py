"""The roots of a backward pass, checked as torch checks them, with torch's messages (code matches on them)."""

from __future__ import annotations

from typing import List, Sequence

import torch


def validate_roots(roots: Sequence[torch.Tensor], scalars: bool = True) -> List[torch.Tensor]:
    """The roots as torch checks them, with torch's messages (code matches on them) and what to do."""
    if isinstance(roots, torch.Tensor) or not isinstance(roots, (list, tuple)):
        raise TypeError(f"backward(): incompatible function arguments: roots must be a list of tensors, "
                        f"got {type(roots).__name__}")
    roots = list(roots)
    if not roots:
        raise RuntimeError("No tensors provided for gradient computation.")
    for i, root in enumerate(roots):
        if not isinstance(root, torch.Tensor):
            raise TypeError(f"backward(): incompatible function arguments: roots must be tensors; "
                            f"root {i} is {type(root).__name__}")
        if not root.requires_grad:
            raise RuntimeError(f"requires_grad not set on root {i}: it does not depend on any tensor that "
                               "requires grad, so there is nothing to differentiate")
        if scalars and root.numel() != 1:
            raise RuntimeError(f"root {i} of shape {tuple(root.shape)} is not a scalar, all roots need to be "
                               "scalar: reduce it first, e.g. loss.sum()")
        if root.grad_fn is None:
            raise RuntimeError(f"root {i} does not have a valid gradient function: it is a leaf tensor; a root "
                               "must be computed from the tensors whose gradients you want")
    return roots
