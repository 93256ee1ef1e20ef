"""Parameter server: one model hosted on a server, several trainers training it at once.

Every trainer runs forward on the server's model over rpc, a distributed backward in its own
context, and a DistributedOptimizer step on the server; the contexts keep their gradients apart.

    python examples/parameter_server.py                # spawns ps, trainer0, trainer1 here
    torchrun --nproc-per-node 3 examples/parameter_server.py
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading

import torch

from distautograd import autograd as dist_autograd
from distautograd import launch, rpc
from distautograd.optim import DistributedOptimizer

FEATURES, CLASSES = 16, 4
_model = None
_model_lock = threading.Lock()


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = torch.nn.Linear(FEATURES, 64)
        self.out = torch.nn.Linear(64, CLASSES)

    def forward(self, x):
        # Other trainers step the optimizer while this trainer's backward is still to come, which
        # would change tensors its graph saved. Forward on clones: the graph keeps its own copy of
        # the weights, and gradients still flow to the parameters through the clone. (Not
        # torch.func.functional_call: it swaps the module's attributes, which races across threads.)
        w1, b1, w2, b2 = (p.clone() for p in (self.hidden.weight, self.hidden.bias, self.out.weight, self.out.bias))
        return torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, w1, b1)), w2, b2)

    def parameter_rrefs(self):
        return [rpc.RRef(p) for p in self.parameters()]


def model_rref() -> rpc.RRef:
    """Runs on the parameter server: the one shared model, made on first use."""
    global _model
    with _model_lock:
        if _model is None:
            _model = Net()
        return rpc.RRef(_model)


def blobs(batch: int, generator: torch.Generator):
    """Gaussian blobs around fixed centres: a task a small MLP learns well."""
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(42)) * 2.5
    y = torch.randint(0, CLASSES, (batch,), generator=generator)
    return centres[y] + torch.randn(batch, FEATURES, generator=generator), y


def train(ps: str, steps: int, bound: float) -> None:
    me = rpc.get_worker_info().name
    model = rpc.rpc_sync(ps, model_rref)
    optimizer = DistributedOptimizer(torch.optim.SGD, model.rpc_sync().parameter_rrefs(), lr=0.05)
    generator = torch.Generator().manual_seed(rpc.get_worker_info().id)
    for step in range(1, steps + 1):
        x, y = blobs(32, generator)
        with dist_autograd.context() as context_id:
            loss = torch.nn.functional.cross_entropy(model.rpc_sync().forward(x), y)
            dist_autograd.backward(context_id, [loss])
            optimizer.step(context_id)
        if step % max(1, steps // 5) == 0:
            print(f"  {me}: step {step:>3}/{steps} loss {loss.item():.4f}", flush=True)
    x, y = blobs(512, generator)
    final = torch.nn.functional.cross_entropy(model.rpc_sync().forward(x), y).item()
    print(f"{me}: held-out loss {final:.4f}", flush=True)
    if not final < bound:
        raise RuntimeError(f"{me}: the model did not learn: held-out loss {final:.4f} (bound {bound})")
    print(f"{me}: learned: held-out loss below {bound}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--bound", type=float, default=0.3, help="the held-out loss must fall below this")
    args = parser.parse_args(argv)
    ps = launch.workers(["ps"])[0]
    trainers = [f"trainer{i}" for i in range(args.trainers)]
    program = functools.partial(train, ps, args.steps, args.bound)
    return launch.run([ps, *trainers], {name: program for name in trainers})


if __name__ == "__main__":
    sys.exit(launch.as_module(__file__, "examples.parameter_server").main())
