"""The demo: a 3-stage MLP trained across three local worker processes, its gradients checked against torch.

Rank 0 is the trainer (it hosts the coordinator); ranks 1-3 each hold one stage. Every step runs
forward over rpc, one distributed backward, and a DistributedOptimizer SGD step; at the end one
batch's gradients are compared with the same model run in one process by plain torch.autograd.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import List

import torch
import torch.multiprocessing as mp

from distautograd import autograd as dist_autograd
from distautograd import rpc
from distautograd.optim import DistributedOptimizer
from distautograd.runtime.rendezvous import free_port
from distautograd.views import export

STAGES = 3
WIDTH = 64
FEATURES = 8
BATCH = 64


class Stage(torch.nn.Module):
    """One slice of the model, living on one worker."""

    def __init__(self, index: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed + index)
        fan_in = FEATURES if index == 0 else WIDTH
        fan_out = 1 if index == STAGES - 1 else WIDTH
        self.layer = torch.nn.Linear(fan_in, fan_out)
        self.last = index == STAGES - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        return y if self.last else torch.tanh(y)

    def parameter_rrefs(self) -> List[rpc.RRef]:
        return [rpc.RRef(p) for p in self.parameters()]

    def state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def gradients(self, context_id: int) -> List[torch.Tensor]:
        grads = dist_autograd.get_gradients(context_id)
        return [grads[p] for p in self.parameters()]


def synthetic_batch(generator: torch.Generator):
    x = torch.randn(BATCH, FEATURES, generator=generator)
    y = torch.sin(x[:, :1] * 2) + 0.5 * x[:, 1:2] ** 2 - 0.3 * x[:, 2:3]
    return x, y


def forward(stages: List[rpc.RRef], x: torch.Tensor) -> torch.Tensor:
    for stage in stages:
        x = stage.rpc_sync().forward(x)
    return x


def train(steps: int, check_every: int, trace_file: str = "", graph_file: str = "") -> int:
    stages = [rpc.remote(f"stage{i + 1}", Stage, args=(i,)) for i in range(STAGES)]
    params = [p for stage in stages for p in stage.rpc_sync().parameter_rrefs()]
    optimizer = DistributedOptimizer(torch.optim.SGD, params, lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    print(f"training a {STAGES}-stage MLP ({FEATURES}->{WIDTH}->{WIDTH}->1) across stage1..stage{STAGES}", flush=True)
    first = last = None
    started = time.perf_counter()
    window = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = synthetic_batch(generator)
        with dist_autograd.context() as context_id:
            loss = torch.nn.functional.mse_loss(forward(stages, x), y)
            dist_autograd.backward(context_id, [loss])
            optimizer.step(context_id)
        first = loss.item() if first is None else first
        last = loss.item()
        if step % check_every == 0 or step == steps:
            per_step = (time.perf_counter() - window) / (check_every if step % check_every == 0 else step % check_every)
            window = time.perf_counter()
            bar = "#" * (30 * step // steps)
            print(f"[{bar:<30}] step {step:>4}/{steps}  loss {last:.4f}  {per_step * 1e3:.1f} ms/step", flush=True)
    elapsed = time.perf_counter() - started
    print(f"loss fell from {first:.4f} to {last:.4f} in {elapsed:.1f} s")
    local_step = time_single_process(steps)
    print(
        f"one training step: {elapsed / steps * 1e3:.2f} ms across {STAGES} workers "
        f"vs {local_step * 1e3:.2f} ms for the same model in one process"
    )
    ok = compare_with_single_process(stages, generator)
    if trace_file or graph_file:
        look_into_one_step(stages, generator, trace_file, graph_file)
    return 0 if ok and last < first else 1


def look_into_one_step(stages: List[rpc.RRef], generator: torch.Generator, trace_file: str, graph_file: str) -> None:
    """One more step, traced, and its graph: files to open in a browser (or Perfetto, for a .json trace)."""
    x, y = synthetic_batch(generator)
    with dist_autograd.context(trace=bool(trace_file), graph=bool(graph_file)) as context_id:
        loss = torch.nn.functional.mse_loss(forward(stages, x), y)
        dist_autograd.backward(context_id, [loss], retain_graph=True)
        graph = dist_autograd.graph(context_id, [loss]) if graph_file else None
        trace = dist_autograd.trace(context_id) if trace_file else None
    if graph_file:
        writer = {"dot": export.to_dot, "json": export.to_json}.get(graph_file.rpartition(".")[2], export.to_html)
        with open(graph_file, "w") as f:
            f.write(writer(graph))
        print(f"wrote the graph of one step ({len(graph['nodes'])} nodes on {len(graph['workers'])} workers) "
              f"to {graph_file}")
    if trace_file:
        with open(trace_file, "w") as f:
            f.write(export.trace_to_html(trace) if trace_file.endswith(".html") else json.dumps(trace))
        print(f"wrote the trace of one step to {trace_file}")


def time_single_process(steps: int) -> float:
    """Seconds per step of the same model and optimizer, trained in this process."""
    model = torch.nn.Sequential(*[Stage(i) for i in range(STAGES)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        x, y = synthetic_batch(generator)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def compare_with_single_process(stages: List[rpc.RRef], generator: torch.Generator) -> bool:
    """One batch through the distributed model and through a local copy: the gradients must match."""
    local = [Stage(i) for i in range(STAGES)]
    for module, stage in zip(local, stages):
        module.load_state_dict(stage.rpc_sync().state())
    x, y = synthetic_batch(generator)
    h = x
    for module in local:
        h = module(h)
    reference = torch.autograd.grad(torch.nn.functional.mse_loss(h, y), [p for m in local for p in m.parameters()])
    with dist_autograd.context() as context_id:
        loss = torch.nn.functional.mse_loss(forward(stages, x), y)
        dist_autograd.backward(context_id, [loss])
        distributed = [g for stage in stages for g in stage.rpc_sync().gradients(context_id)]
    names = [f"stage{i + 1}.{name}" for i, m in enumerate(local) for name, _ in m.named_parameters()]
    print("\ngradients of one batch, distributed vs. single-process torch.autograd:")
    print(f"  {'parameter':<20} {'shape':<10} {'max |diff|':>12}  bit-identical")
    identical = True
    for name, ref, got in zip(names, reference, distributed):
        diff = (ref - got).abs().max().item()
        same = torch.equal(ref, got)  # the same arithmetic in the same order: nothing less counts
        identical &= same
        print(f"  {name:<20} {str(tuple(ref.shape)):<10} {diff:>12.3g}  {'yes' if same else 'no'}")
    print("gradients are bit-identical" if identical else "GRADIENTS DIFFER from single-process torch")
    return identical


def _run_rank(rank: int, world_size: int, port: int, steps: int, check_every: int, results, trace_file: str = "",
              graph_file: str = "") -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    name = "trainer" if rank == 0 else f"stage{rank}"
    options = rpc.BackendOptions(rpc_timeout=60, allowed_modules=["distautograd.demo"])
    rpc.init_rpc(name, rank=rank, world_size=world_size, rpc_backend_options=options)
    try:
        if rank == 0:
            results.put(train(steps, check_every, trace_file, graph_file))
    finally:
        rpc.shutdown()


def main(steps: int = 300, check_every: int = 50, trace: str = "", graph: str = "") -> int:
    """``trace`` / ``graph``: files to write one more step's trace (.json for Perfetto, .html) and
    its graph (.html, .dot or .json) to."""
    port = free_port()
    world_size = STAGES + 1
    print(f"starting a coordinator and {world_size} processes on this machine (trainer + {STAGES} stages)...", flush=True)
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(
        _run_rank, args=(world_size, port, steps, check_every, results, os.path.abspath(trace) if trace else "",
                         os.path.abspath(graph) if graph else ""), nprocs=world_size, start_method="spawn"
    )
    return results.get() if not results.empty() else 1


if __name__ == "__main__":
    sys.exit(main())
