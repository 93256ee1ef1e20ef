"""Pipeline parallel: a model split over two workers, micro-batches in flight with rpc_async.

Each micro-batch goes trainer -> stage 1 -> stage 2 without waiting for the others, so stage 1
works on micro-batch k+1 while stage 2 works on micro-batch k; in the backward pass the same
happens the other way round. The script trains twice, without and with micro-batches, and prints
the time per step of both (on 2 cores, batch 512: ~96 vs ~75 ms). Micro-batches pay off when each
is big enough that its compute outweighs its messages: at batch 256 in 4 parts they do not.

    python examples/pipeline.py                      # spawns trainer, worker1, worker2 here
    torchrun --nproc-per-node 3 examples/pipeline.py
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
import time

import torch

from distautograd import autograd as dist_autograd
from distautograd import launch, rpc
from distautograd.optim import DistributedOptimizer

IN, HIDDEN, OUT = 128, 1024, 16


class Stage(torch.nn.Module):
    """Half of the model; calls on it are serialized, as one process holds it."""

    def __init__(self, index: int):
        super().__init__()
        torch.set_num_threads(1)
        torch.manual_seed(index)
        if index == 0:
            self.net = torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU())
        else:
            self.net = torch.nn.Sequential(torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, OUT))
        self._lock = threading.Lock()

    def forward(self, x_rref: rpc.RRef) -> torch.Tensor:
        x = x_rref.to_here()
        with self._lock:
            return self.net(x)

    def parameter_rrefs(self):
        return [rpc.RRef(p) for p in self.parameters()]


class Pipeline(torch.nn.Module):
    def __init__(self, stages):
        super().__init__()
        self.stage1 = rpc.remote(stages[0], Stage, args=(0,))
        self.stage2 = rpc.remote(stages[1], Stage, args=(1,))

    def forward(self, x: torch.Tensor, micro_batches: int) -> torch.Tensor:
        outputs = []
        for part in x.chunk(micro_batches):
            y = self.stage1.remote().forward(rpc.RRef(part))
            outputs.append(self.stage2.rpc_async().forward(y))
        return torch.cat(torch.futures.wait_all(outputs))

    def parameter_rrefs(self):
        return self.stage1.rpc_sync().parameter_rrefs() + self.stage2.rpc_sync().parameter_rrefs()


def batches(steps: int, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(IN, OUT, generator=g) / IN**0.5
    for _ in range(steps):
        x = torch.randn(batch, IN, generator=g)
        yield x, torch.tanh(x @ teacher) * 3


def train_once(model: Pipeline, steps: int, batch: int, micro_batches: int) -> tuple:
    optimizer = DistributedOptimizer(torch.optim.Adam, model.parameter_rrefs(), lr=1e-3)
    losses, started = [], None
    for step, (x, y) in enumerate(batches(steps, batch), 1):
        if step == 3:
            started = time.perf_counter()  # the first steps warm up
        with dist_autograd.context() as context_id:
            loss = torch.nn.functional.mse_loss(model(x, micro_batches), y)
            dist_autograd.backward(context_id, [loss])
            optimizer.step(context_id)
        losses.append(loss.item())
        if step % max(1, steps // 5) == 0 or step == steps:
            print(f"  [{micro_batches} micro-batch{'es' if micro_batches > 1 else ''}] step {step:>3}/{steps} loss {losses[-1]:.4f}", flush=True)
    return losses, (time.perf_counter() - started) / (steps - 2)


def train(steps: int = 30, batch: int = 512, micro_batches: int = 2, bound: float = 0.5) -> None:
    stages = launch.workers(["worker1", "worker2"])
    print(f"pipeline over {stages[0]} and {stages[1]}: {IN}->{HIDDEN}->{HIDDEN} | {HIDDEN}->{HIDDEN}->{OUT}, batch {batch}", flush=True)
    results = {}
    for parts in (1, micro_batches):
        losses, per_step = train_once(Pipeline(stages), steps, batch, parts)
        results[parts] = per_step
        print(f"  {parts} micro-batch(es): {per_step * 1e3:.1f} ms/step, loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
        if not losses[-1] < min(bound, losses[0]):
            raise RuntimeError(f"the pipeline did not learn: final loss {losses[-1]:.4f} (bound {bound})")
    print(f"without micro-batches {results[1] * 1e3:.1f} ms/step, with {micro_batches}: {results[micro_batches] * 1e3:.1f} ms/step "
          f"({results[1] / results[micro_batches]:.2f}x)")
    print(f"learned: final loss below {bound}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--micro-batches", type=int, default=2, help="two keep both stages busy")
    parser.add_argument("--bound", type=float, default=0.5, help="the final loss must fall below this")
    args = parser.parse_args(argv)
    program = functools.partial(train, args.steps, args.batch, args.micro_batches, args.bound)
    return launch.run(["trainer", *launch.workers(["worker1", "worker2"])], {"trainer": program})


if __name__ == "__main__":
    sys.exit(launch.as_module(__file__, "examples.pipeline").main())
