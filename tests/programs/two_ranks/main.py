"""Two ranks by mp.spawn; rank 0 uses rank 1 through the program's own module and a library's model.

Nothing here names an allowlist: both ranks run this program, so its modules are trusted, and so
are the model classes of the libraries it loaded; other library functions are not.
"""

import os
import sys

import fancylib
import tables
import torch
import torch.multiprocessing as mp

from distautograd import autograd as dist_autograd
from distautograd import rpc
from distautograd.errors import PermissionDenied


def check(rank, marker):
    ids = torch.tensor([1, 2, 2, 5])
    table = rpc.remote("worker1", tables.EmbeddingTable, args=(8, 3))
    with dist_autograd.context() as context_id:
        out = tables._remote_method(tables.EmbeddingTable.forward, table, ids)
        dist_autograd.backward(context_id, [(out * out).sum()])
        got = rpc.rpc_sync("worker1", tables.gradient_of_table, args=(table, context_id))
    local = tables.EmbeddingTable(8, 3)
    local_out = local(ids)
    (local_out * local_out).sum().backward()
    assert torch.equal(got, local.embedding.weight.grad), (got, local.embedding.weight.grad)

    model = rpc.remote("worker1", fancylib.LibModel, args=(3,))
    assert torch.equal(model.rpc_sync().forward(torch.ones(3)), fancylib.LibModel(3)(torch.ones(3)))

    try:
        rpc.rpc_sync("worker1", fancylib.not_a_model, args=(marker,))
    except PermissionDenied as e:
        assert "fancylib.not_a_model" in str(e), e
    else:
        raise AssertionError("a library function that is not a model was called")
    assert not os.path.exists(marker)
    print("program checks passed")


def check_untrusted():
    """Rank 1 said trust_program=False: the program's own functions are refused there, naming them (its
    model classes are still taken, as any loaded library's are)."""
    try:
        rpc.rpc_sync("worker1", tables.gradient_of_table, args=(None, 0))
    except PermissionDenied as e:
        assert "tables.gradient_of_table" in str(e), e
    else:
        raise AssertionError("worker1 ran the program's code although it does not trust the program")
    assert rpc.rpc_sync("worker1", torch.add, args=(torch.ones(2), 1)).tolist() == [2.0, 2.0]
    print("untrusted checks passed")


def run(rank, world_size, port, marker, trust):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    options = rpc.BackendOptions(trust_program=False) if trust == "untrusted" and rank == 1 else None
    rpc.init_rpc(f"worker{rank}", rank=rank, world_size=world_size, rpc_backend_options=options)
    if rank == 0:
        check_untrusted() if trust == "untrusted" else check(rank, marker)
    rpc.shutdown()


if __name__ == "__main__":
    mp.spawn(run, args=(2, int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "trusted"), nprocs=2)
