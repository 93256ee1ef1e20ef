"""The measured programs. Each runs on rank 0 of a world; the other ranks serve.

Every program takes the framework (see frameworks.py) and returns a dict of results: the same
code measures both, so only the framework differs.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Dict, List

import torch

WIDTH, BATCH, STAGES = 512, 64, 3


def median_time(fn, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# ---------------------------------------------------------------- functions the servers run


def add(a, b):
    return a + b


def nbytes(t):
    return t.numel() * t.element_size()


class Stage(torch.nn.Module):
    def __init__(self, index: int):
        super().__init__()
        torch.manual_seed(index)
        self.layer = torch.nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        return torch.relu(self.layer(x))

    def parameter_rrefs(self):
        return [_rref(p) for p in self.parameters()]


_framework = ""  # which framework this process runs, set before anything else


def set_framework(name: str) -> None:
    global _framework
    _framework = name


def _rref(value):
    from distautograd.bench.frameworks import load

    return load(_framework).rpc.RRef(value)


def chain_forward(x, next_workers):
    """Runs this worker's scaling and passes on to the next worker of the chain, nested."""
    from distautograd.bench.frameworks import load

    y = x * 1.0001
    if not next_workers:
        return y
    rpc = load(_framework).rpc
    return rpc.rpc_sync(next_workers[0], chain_forward, args=(y, next_workers[1:]))


class ParameterServer:
    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        self.lock = threading.Lock()

    def forward(self, x):
        w1, b1, w2, b2 = (p.clone() for p in self.model.parameters())
        return torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, w1, b1)), w2, b2)

    def parameter_rrefs(self):
        return [_rref(p) for p in self.model.parameters()]


_server = None
_server_lock = threading.Lock()


def server_rref():
    global _server
    with _server_lock:
        if _server is None:
            _server = ParameterServer()
    return _rref(_server)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- the programs


def small_calls(fw, repeats: int) -> Dict[str, float]:
    """The median round trip, and the CPU time each side spent per call (every thread of its process, as
    the chain's rows count it): what a call costs the machine, where the wall time also waits. For
    distautograd, then as many calls again with each side's reading thread's share added up
    (transport.frame_cpu): reading the frame (the request on the callee, the reply on the caller), and
    handling it there."""
    a, b = torch.ones(1), torch.ones(1)

    def call():
        fw.rpc.rpc_sync("worker1", add, args=(a, b))

    caller, callee = cpu_seconds(), fw.rpc.rpc_sync("worker1", cpu_seconds)
    latency = median_time(call, repeats, warmup=200)
    calls = repeats + 200 + 1  # the timed ones, the warm-up, and the callee's first reading of its clock
    callee = fw.rpc.rpc_sync("worker1", cpu_seconds) - callee
    caller = cpu_seconds() - caller
    out = {"latency_us": latency * 1e6, "caller_cpu_us": caller / calls * 1e6, "callee_cpu_us": callee / calls * 1e6}
    if _framework == "distautograd":
        fw.rpc.rpc_sync("worker1", start_frame_cpu)
        start_frame_cpu()
        call()  # the caller's reading thread may have waited for this reply before counting began: read untimed
        for _ in range(repeats):
            call()
        for side, spent in (("caller", stop_frame_cpu()), ("callee", fw.rpc.rpc_sync("worker1", stop_frame_cpu))):
            frames = spent["frames"] or 1
            out[f"{side}_reading_us"] = spent["reading"] / frames * 1e6
            out[f"{side}_handling_us"] = spent["handling"] / frames * 1e6
            for stage, seconds in spent["stages"].items():
                out[f"{side}_stage {stage}"] = seconds / frames * 1e6
    return out


def start_frame_cpu() -> None:
    from distautograd.transport import frame_cpu

    frame_cpu.start()


def stop_frame_cpu() -> dict:
    """What frame_cpu added up, its stages as {"mark > next mark": CPU seconds}."""
    from distautograd.transport import frame_cpu

    return {**frame_cpu.stop(), "stages": {f"{first} > {then}": s for (first, then), s in frame_cpu.stages().items()}}


def transfer(fw, sizes_mib: List[int], repeats: int) -> Dict[str, float]:
    out = {}
    for mib in sizes_mib:
        t = torch.randn(mib << 18)
        seconds = median_time(lambda: fw.rpc.rpc_sync("worker1", nbytes, args=(t,)), repeats, warmup=2)
        out[f"{mib}MiB_GBps"] = (mib << 20) / seconds / 1e9
    return out


def _pipeline(fw):
    stages = [fw.rpc.remote(f"worker{i + 1}", Stage, args=(i,)) for i in range(STAGES)]
    params = [p for s in stages for p in s.rpc_sync().parameter_rrefs()]
    optimizer = fw.DistributedOptimizer(torch.optim.SGD, params, lr=0.01)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, WIDTH, generator=g), torch.randn(BATCH, WIDTH, generator=g)

    def forward():
        h = x
        for stage in stages:
            h = stage.rpc_sync().forward(h)
        return torch.nn.functional.mse_loss(h, y)

    return stages, optimizer, forward


def pipeline_step(fw, repeats: int) -> Dict[str, float]:
    stages, optimizer, forward = _pipeline(fw)

    def step():
        with fw.autograd.context() as context_id:
            fw.autograd.backward(context_id, [forward()])
            optimizer.step(context_id)

    backward_times = []

    def backward_only():
        with fw.autograd.context() as context_id:
            loss = forward()
            start = time.perf_counter()
            fw.autograd.backward(context_id, [loss])
            backward_times.append(time.perf_counter() - start)

    step_time = median_time(step, repeats)
    median_time(backward_only, repeats)
    out = {"step_ms": step_time * 1e3, "backward_ms": statistics.median(backward_times[5:]) * 1e3}
    if _framework == "distautograd":  # what recording a trace of every step costs (views.trace)
        def traced():
            with fw.autograd.context(trace=True) as context_id:
                fw.autograd.backward(context_id, [forward()])
                optimizer.step(context_id)

        out["traced_step_ms"] = median_time(traced, repeats) * 1e3
        out["untraced_step_ms"] = median_time(step, repeats) * 1e3
    return out


def parameter_server(fw, trainers: List[str], seconds: float) -> Dict[str, float]:
    """Runs on trainer0; the other trainers run trainer_loop at the same time."""
    counts = [fw.rpc.rpc_async(t, trainer_loop, args=(_framework, seconds)) for t in trainers]
    total = sum(f.wait() for f in counts)
    return {"steps_per_s": total / seconds}


def trainer_loop(framework: str, seconds: float) -> int:
    from distautograd.bench.frameworks import load

    set_framework(framework)
    fw = load(framework)
    server = fw.rpc.rpc_sync("ps", server_rref)
    optimizer = fw.DistributedOptimizer(torch.optim.SGD, server.rpc_sync().parameter_rrefs(), lr=0.01)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    steps, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        with fw.autograd.context() as context_id:
            loss = torch.nn.functional.cross_entropy(server.rpc_sync().forward(x), y)
            fw.autograd.backward(context_id, [loss])
            optimizer.step(context_id)
        steps += 1
    return steps


def backward_chain(fw, workers: List[str], repeats: int) -> Dict[str, float]:
    """The backward's median wall time, and the CPU time each worker spent per step (forward and
    backward, every thread of its process): the work a step costs, apart from how the scheduler
    placed it, so a saving shows even where the wall time is noisy."""
    w = torch.randn(BATCH, WIDTH, requires_grad=True)
    times = []

    def once():
        with fw.autograd.context() as context_id:
            loss = fw.rpc.rpc_sync(workers[0], chain_forward, args=(w, workers[1:])).sum()
            start = time.perf_counter()
            fw.autograd.backward(context_id, [loss])
            times.append(time.perf_counter() - start)

    before = [fw.rpc.rpc_sync(name, cpu_seconds) for name in workers]
    median_time(once, repeats)
    spent = sum(fw.rpc.rpc_sync(name, cpu_seconds) for name in workers) - sum(before)
    return {"backward_ms": statistics.median(times[5:]) * 1e3,
            "worker_cpu_ms": spent / len(times) / len(workers) * 1e3}


def cpu_seconds() -> float:
    """The CPU time of this process so far, every thread's, user and system."""
    return time.process_time()


def hop_breakdown(fw, workers: List[str], repeats: int) -> Dict[str, float]:
    """Backward through the chain with every worker stamping each hop (transport.hops); distautograd only."""
    from distautograd.bench import breakdown

    everyone = workers + [fw.rpc.get_worker_info().name]
    for name in everyone:
        fw.rpc.rpc_sync(name, start_hops)
    backward_chain(fw, workers, repeats)
    return breakdown.summarize([h for name in everyone for h in fw.rpc.rpc_sync(name, stop_hops)])


def start_hops() -> None:
    from distautograd.transport import hops

    hops.start()


def stop_hops() -> list:
    from distautograd.transport import hops

    return hops.stop()


def memory_over_steps(fw, steps: int, checkpoints: List[int]) -> Dict[str, float]:
    """The resident memory of every process at each checkpoint of a long training run."""
    stages, optimizer, forward = _pipeline(fw)
    names = ["trainer"] + [f"worker{i + 1}" for i in range(STAGES)]
    out = {}
    for step in range(1, steps + 1):
        with fw.autograd.context() as context_id:
            fw.autograd.backward(context_id, [forward()])
            optimizer.step(context_id)
        if step in checkpoints:
            for name in names:
                rss = rss_bytes() if name == "trainer" else fw.rpc.rpc_sync(name, rss_bytes)
                out[f"{name}@{step}"] = rss / 2**20
    return out


def single_process_step(repeats: int) -> Dict[str, float]:
    """The same 3-stage model and optimizer in one process, one thread: the floor for pipeline_step."""
    torch.set_num_threads(1)
    model = torch.nn.Sequential(*[Stage(i) for i in range(STAGES)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, WIDTH, generator=g), torch.randn(BATCH, WIDTH, generator=g)

    def step():
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()

    return {"step_ms": median_time(step, repeats) * 1e3}


def memcpy(mib: int = 64, repeats: int = 10) -> Dict[str, float]:
    src, dst = torch.randn(mib << 18), torch.empty(mib << 18)
    seconds = median_time(lambda: dst.copy_(src), repeats, warmup=2)
    return {"GBps": (mib << 20) / seconds / 1e9}
