"""Where gradients meet they are summed in one fixed order: the same bits as out-of-place addition, inputs untouched."""

import torch

from distautograd.autograd.segments import total


def test_sums_in_descending_order_bit_for_bit_and_leaves_the_parts_alone():
    grads = [torch.randn(1000) * 10 ** i for i in range(4)]
    originals = [g.clone() for g in grads]
    parts = [((0, i), g) for i, g in enumerate(grads)]
    expected = ((grads[3] + grads[2]) + grads[1]) + grads[0]
    got = total(parts)
    assert torch.equal(got, expected)
    assert all(torch.equal(g, o) for g, o in zip(grads, originals))
    assert total([((0, 0), grads[0])]) is grads[0]


def test_sparse_and_dense_gradients_mix_in_any_order():
    dense = torch.randn(5, 3)
    sparse = torch.sparse_coo_tensor([[0, 2]], torch.randn(2, 3), (5, 3), check_invariants=True)
    for orders in [(3, 2, 1), (1, 2, 3), (2, 3, 1)]:
        parts = list(zip([(0, o) for o in orders], [sparse, sparse, dense]))
        got = total(list(parts))
        assert torch.allclose(got.to_dense(), dense + sparse.to_dense() * 2)
