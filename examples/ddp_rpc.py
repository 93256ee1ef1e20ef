"""DDP + RPC: an embedding table on a parameter server, a dense part trained with DDP over two trainers.

As pytorch/examples' distributed/ddp_rpc: the embedding is a RemoteModule on "ps"; each trainer
runs its dense layer under DistributedDataParallel (a gloo group of the two trainers), inside a
distributed autograd context. One backward gives the DDP-averaged dense gradient and this
trainer's embedding gradient on the server; one DistributedOptimizer step updates both. At the
end trainer0 replays every step in one process with plain torch and checks the parameters match.

    python examples/ddp_rpc.py                   # spawns ps, trainer0, trainer1 here
    torchrun --nproc-per-node 3 examples/ddp_rpc.py
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from distautograd import autograd as dist_autograd
from distautograd import launch, rpc
from distautograd.nn import RemoteModule
from distautograd.optim import DistributedOptimizer
from distautograd.runtime.rendezvous import free_port

NUM_EMBEDDINGS, EMBEDDING_DIM, CLASSES, BAGS = 100, 16, 8, 12
TRAINERS = ["trainer0", "trainer1"]
LR = 0.5


def dense_layer() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(EMBEDDING_DIM, CLASSES)


def batch(rank: int, step: int):
    """Bags of embedding ids (indices, offsets) and a class for each, the same in every run."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    lengths = torch.randint(1, 6, (BAGS,), generator=g)
    indices = torch.randint(0, NUM_EMBEDDINGS, (int(lengths.sum()),), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    target = (indices[offsets] % CLASSES)  # learnable: the class of a bag follows its first id
    return indices, offsets, target


def train(steps: int) -> None:
    me = rpc.get_worker_info().name
    rank = TRAINERS.index(me)
    table = RemoteModule("ps/cpu", torch.nn.EmbeddingBag, args=(NUM_EMBEDDINGS, EMBEDDING_DIM),
                         kwargs={"mode": "sum"}) if rank == 0 else None
    shared = rpc.api._all_gather((table, free_port()) if rank == 0 else None, worker_names=TRAINERS)
    table, port = shared["trainer0"]  # both trainers use trainer0's table and its process group port
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=rank, world_size=len(TRAINERS))
    try:
        model = DDP(dense_layer())
        start = [p.to_here() for p in table.remote_parameters()]  # before anyone steps
        dist.barrier()
        params = table.remote_parameters() + [rpc.RRef(p) for p in model.parameters()]
        optimizer = DistributedOptimizer(torch.optim.SGD, params, lr=LR)
        for step in range(steps):
            indices, offsets, target = batch(rank, step)
            with dist_autograd.context() as context_id:
                loss = torch.nn.functional.cross_entropy(model(table(indices, offsets)), target)
                dist_autograd.backward(context_id, [loss])
                optimizer.step(context_id)
            dist.barrier()  # both trainers' steps landed before either reads the table again
            if step % max(1, steps // 5) == 0 or step == steps - 1:
                print(f"  {me}: step {step:>3}/{steps} loss {loss.item():.4f}", flush=True)
        dense = [p.detach().clone() for p in model.parameters()]
        replicas = rpc.api._all_gather(dense, worker_names=TRAINERS)
        assert all(torch.equal(a, b) for a, b in zip(*replicas.values())), "the DDP replicas differ"
        if rank == 0:
            check_against_one_process(start, [p.to_here() for p in table.remote_parameters()], dense, steps)
    finally:
        dist.destroy_process_group()


def check_against_one_process(table_start, table_end, dense_end, steps: int) -> None:
    """Replays every step in this process with plain torch: the same two batches per step, the
    dense gradient averaged over the two (DDP), the table stepped once per trainer."""
    table = torch.nn.EmbeddingBag(NUM_EMBEDDINGS, EMBEDDING_DIM, mode="sum")
    with torch.no_grad():
        table.weight.copy_(table_start[0])
    dense = dense_layer()
    for step in range(steps):
        losses = [torch.nn.functional.cross_entropy(dense(table(*batch(r, step)[:2])), batch(r, step)[2])
                  for r in range(len(TRAINERS))]
        table_grad = torch.autograd.grad(sum(losses), table.weight, retain_graph=True)[0]
        dense_grads = torch.autograd.grad(sum(losses) / len(TRAINERS), list(dense.parameters()))
        with torch.no_grad():
            table.weight -= LR * table_grad
            for p, g in zip(dense.parameters(), dense_grads):
                p -= LR * g
    diffs = [(a - b).abs().max().item() for a, b in zip([table.weight, *dense.parameters()], [*table_end, *dense_end])]
    print(f"trainer0: after {steps} steps the parameters match a single-process run: max |diff| {max(diffs):.2g}",
          flush=True)
    if not max(diffs) < 1e-5:
        raise RuntimeError(f"the distributed run drifted from the single-process one: max |diff| {max(diffs):.3g}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    program = functools.partial(train, args.steps)
    return launch.run(["ps", *TRAINERS], {name: program for name in TRAINERS})


if __name__ == "__main__":
    sys.exit(launch.as_module(__file__, "examples.ddp_rpc").main())
