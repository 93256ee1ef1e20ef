"""Runs every benchmark on torch.distributed.rpc and on distautograd, alternating, and prints the table.

    python -m distautograd.bench            # the full run (about 15 minutes on 2 cores)
    python -m distautograd.bench --quick    # small sizes and few steps, to see that it works
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

from distautograd.bench import rounds as rounds_of
from distautograd.bench.rounds import FRAMEWORKS
from distautograd.runtime.rendezvous import free_port

PORT_TRIES = 3  # a port probed free can be taken before the world's first process binds it


def run_world(framework: str, workload: str, names: List[str], params: dict, transport: str = "auto") -> dict:
    import torch.multiprocessing as mp

    from distautograd.bench.rank import spawn_entry

    for attempt in range(PORT_TRIES):
        spec = dict(framework=framework, workload=workload, names=names, params=params, port=free_port(),
                    transport=transport)
        results = mp.get_context("spawn").SimpleQueue()
        try:
            mp.start_processes(spawn_entry, args=(spec, results), nprocs=len(names), start_method="spawn")
        except mp.ProcessRaisedException as exc:
            taken = "cannot listen on" in str(exc) or "already in use" in str(exc).lower()
            if attempt + 1 == PORT_TRIES or not taken:
                raise
            print(f"  the world's port {spec['port']} was taken before it could listen; again on another",
                  file=sys.stderr, flush=True)
            continue
        return results.get()
    raise AssertionError("unreachable")


def run_world_in_namespaces(framework: str, workload: str, params: dict) -> dict:
    """Two processes, each in its own network namespace: the real TCP path."""
    from distautograd import netns
    from distautograd.testing import run_together

    names = ["trainer", "worker1"]
    with netns.Network(names) as network:
        spec = dict(framework=framework, workload=workload, names=names, params=params, port=free_port(),
                    transport="tcp")
        env = dict(os.environ, BENCH_MASTER_ADDR=network.addresses["trainer"], DISTAUTOGRAD_TOKEN="bench-token",
                   GLOO_SOCKET_IFNAME="eth0", TP_SOCKET_IFNAME="eth0")
        results = run_together(
            [network.command(name, [sys.executable, "-m", "distautograd.bench.rank", json.dumps(spec), str(rank)])
             for rank, name in enumerate(names)],
            timeout=600, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for result in results:
            if result.returncode != 0:
                raise RuntimeError(f"{framework} {workload} in namespaces failed:\n{result.stdout}\n{result.stderr[-3000:]}")
        line = next(l for l in results[0].stdout.splitlines() if l.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])


def measure(label: str, rounds: int, run) -> Dict[str, dict]:
    """Runs ``run(framework)`` for each framework, alternating, ``rounds`` times; medians per key, and each
    round's values kept beside them (bench/rounds.py)."""
    samples: Dict[str, Dict[str, List[float]]] = {fw: {} for fw in FRAMEWORKS}
    for round_ in range(rounds):
        order = FRAMEWORKS if round_ % 2 == 0 else FRAMEWORKS[::-1]
        for fw in order:
            print(f"  {label}: {fw} (round {round_ + 1}/{rounds})", file=sys.stderr, flush=True)
            for key, value in run(fw).items():
                samples[fw].setdefault(key, []).append(value)
    return rounds_of.keep({fw: {k: statistics.median(v) for k, v in per.items()} for fw, per in samples.items()},
                          samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few steps, to check that it runs")
    parser.add_argument("--rounds", type=int, default=None, help="alternations per benchmark (default 3, quick 1)")
    parser.add_argument("--only", nargs="*",
                        help="run only these: latency transfer netns pipeline ps chain hops memory")
    args = parser.parse_args(argv)
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    selected = set(args.only or ["latency", "transfer", "netns", "pipeline", "ps", "chain", "hops", "memory"])
    from distautograd import native, netns
    from distautograd.bench import iperf, memory, workloads

    print(f"distautograd: {native.built()}", file=sys.stderr)

    rows = []
    traced = []  # (step ms without a trace, with one), distautograd only
    call_stages = ""  # where a small call's CPU goes on distautograd's reading threads
    started = time.monotonic()

    def row(what, results, key, unit, target=None, limit=None):
        """``target``: ("<=" or ">=", ratio to torch), ("memcpy", share of memcpy's rate), ("iperf3", share,
        iperf3's rate), or a list of those."""
        t, d = results["torch"][key], results["distautograd"][key]
        ratio = d / t if t else float("nan")
        rows.append((what, unit, t, d, ratio, rounds_of.ratios(results, key), target, limit))

    two = ["trainer", "worker1"]
    if "latency" in selected:
        r = measure("small-call latency", rounds, lambda fw: run_world(fw, "small_calls", two + ["worker2"],
                                                                         {"repeats": 300 if quick else 3000}))
        row("rpc_sync latency, 1-element add (3 processes)", r, "latency_us", "us", ("<=", 0.5))
        row("  CPU per call, caller", r, "caller_cpu_us", "us")
        row("  CPU per call, callee", r, "callee_cpu_us", "us")
        call_stages = _call_stages(r["distautograd"])
    memcpy = workloads.memcpy()["GBps"]
    if "transfer" in selected:
        sizes = [1, 16] if quick else [1, 64, 512]
        r = measure("one-way transfer, same host", rounds, lambda fw: run_world(
            fw, "transfer", two, {"sizes_mib": sizes, "repeats": 3 if quick else 7}))
        for mib in sizes:
            row(f"{mib} MiB one way, same host", r, f"{mib}MiB_GBps", "GB/s",
                ("memcpy", 0.85) if mib == 64 else None, f"memcpy {memcpy:.1f} GB/s")
    if "netns" in selected:
        reason = netns.available()
        if reason:
            print(f"skipping the network-namespace transfer: {reason}", file=sys.stderr)
        else:
            sizes = [1, 16] if quick else [1, 64]
            r = measure("one-way transfer, two namespaces", rounds, lambda fw: run_world_in_namespaces(
                fw, "transfer", {"sizes_mib": sizes, "repeats": 3 if quick else 5}))
            reach = iperf.between_namespaces(1.0 if quick else 3.0)
            if reach is None:
                print("no iperf3 figure (not installed, or said why above): the namespace rows are not compared "
                      "with it", file=sys.stderr)
            for mib in sizes:
                bar = [(">=", 1.0)] + ([("iperf3", 0.7, reach)] if reach else [])
                row(f"{mib} MiB one way, TCP between namespaces", r, f"{mib}MiB_GBps", "GB/s",
                    bar if mib == sizes[-1] else None, f"iperf3 {reach:.2f} GB/s" if reach else None)
    if "pipeline" in selected:
        names = ["trainer", "worker1", "worker2", "worker3"]
        r = measure("pipeline step", rounds, lambda fw: run_world(fw, "pipeline_step", names,
                                                                   {"repeats": 30 if quick else 200}))
        local = workloads.single_process_step(50 if quick else 200)["step_ms"]
        row("3-stage MLP training step (512 wide, batch 64)", r, "step_ms", "ms", ("<=", 0.8),
            f"one process {local:.2f} ms")
        row("  of which distributed backward", r, "backward_ms", "ms", ("<=", 0.8))
        ours = r["distautograd"]
        traced.append((ours["untraced_step_ms"], ours["traced_step_ms"]))
    if "ps" in selected:
        for count in [4] if quick else [1, 2, 4, 8]:
            trainers = [f"trainer{i}" for i in range(count)]
            names = trainers[:1] + ["ps"] + trainers[1:]  # rank 0 drives the trainers
            r = measure(f"parameter server, {count} trainers", rounds, lambda fw, names=names, trainers=trainers: run_world(
                fw, "parameter_server", names, {"trainers": trainers, "seconds": 2 if quick else 10}))
            row(f"parameter server, {count} trainer{'s' if count > 1 else ''}", r, "steps_per_s", "steps/s",
                (">=", 1.25) if count == 4 else None)
    chain = {}
    if "chain" in selected:
        lengths = [2] if quick else [2, 4, 6, 8]
        for n in lengths:
            names = ["trainer"] + [f"worker{i + 1}" for i in range(n)]
            r = chain[n] = measure(f"backward through {n} workers", rounds, lambda fw, names=names: run_world(
                fw, "backward_chain", names, {"workers": names[1:], "repeats": 20 if quick else 100}))
            row(f"backward through a chain of {n} workers", r, "backward_ms", "ms",
                ("<=", 0.8) if n == 6 else None)
            if n == lengths[-1]:
                row(f"  CPU per worker per step, chain of {n}", r, "worker_cpu_ms", "ms")
        if len(lengths) > 1:
            first, last = lengths[0], lengths[-1]
            row(f"  cost of each worker added, {first} to {last}",
                rounds_of.growth(chain, first, last, "backward_ms"), "backward_ms", "ms", ("<=", 1.0))
    hop_rounds: Dict[str, List[Dict[str, float]]] = {}
    if "hops" in selected:  # distautograd only: torch's hop is C++ that cannot be stamped from here
        names = ["trainer"] + [f"worker{i + 1}" for i in range(4)]
        paths = _paths()
        for round_ in range(rounds):
            for path in paths if round_ % 2 == 0 else paths[::-1]:
                print(f"  one backward hop, stage by stage, {path} path (round {round_ + 1}/{rounds})", file=sys.stderr,
                      flush=True)
                with _on_path(path):
                    hop_rounds.setdefault(path, []).append(run_world(
                        "distautograd", "hop_breakdown", names, {"workers": names[1:], "repeats": 20 if quick else 100}))
    memory_run = None  # (results, processes, checkpoints)
    if "memory" in selected:
        steps = memory.checkpoints(30, 300) if quick else memory.checkpoints(1_000, 10_000)
        names = ["trainer", "worker1", "worker2", "worker3"]
        memory_run = (measure("memory over a long run", 1, lambda fw: run_world(
            fw, "memory_over_steps", names, {"steps": steps[-1], "checkpoints": steps})), names, steps)

    print(f"\nmedians of {rounds} alternating round(s), {time.monotonic() - started:.0f} s in all; "
          f"ratio = distautograd / torch.distributed.rpc; by round: each round's own ratio, lowest-highest; "
          f"rounds met: in how many rounds that ratio met the target\n")
    print(f"| {'what':<48} | {'torch':>9} | {'distautograd':>12} | {'ratio':>6} | {'by round':>9} | {'target':>14} | met "
          f"| rounds met | limit |")
    print(f"|{'-' * 50}|{'-' * 11}|{'-' * 14}|{'-' * 8}|{'-' * 11}|{'-' * 16}|-----|------------|-------|")
    for what, unit, t, d, ratio, by_round, target, limit in rows:
        shown, met = _judge(target, ratio, d, memcpy)
        print(f"| {what + ' (' + unit + ')':<48} | {t:>9.3g} | {d:>12.3g} | {ratio:>6.2f} | "
              f"{rounds_of.span(by_round):>9} | {shown:>14} | {met:^3} | {_rounds_met(target, by_round):^10} | "
              f"{limit or ''} |")
    if call_stages:
        print("\n" + call_stages)
    if traced:
        off, on = traced[0]
        print(f"\nrecording a trace of every step (context(trace=True)), distautograd: {off:.2f} ms without, "
              f"{on:.2f} ms with ({(on - off) / off * 100:+.0f}%); off, tracing costs one flag test per call")
    if hop_rounds:
        _print_hops(hop_rounds, chain)
    if memory_run:
        memory.report(memory_run[0], FRAMEWORKS, memory_run[1], memory_run[2])
    return 0


CALL_STAGES = [  # (the stage frame_cpu added up on the callee, what it is)
    ("callee_reading_us", "the call's frame read (the core's read: the wake-up, the system calls, the GIL taken back)"),
    ("callee_stage read > dispatched", "the frame taken apart and handed to the call's handler"),
    ("callee_stage dispatched > decoded", "the call decoded: its context, its RRefs, unpickled through the allowlist, "
                                          "its tensors made"),
    ("callee_stage decoded > ran", "the function run, under the call's context"),
    ("callee_stage ran > encoded", "its result placed and encoded"),
    ("callee_stage encoded > end", "the reply written, the reading taken back"),
    ("caller_reading_us", "on the caller: the reply's frame read"),
    ("caller_handling_us", "on the caller: the reply decoded and handed to the waiting caller"),
]


def _call_stages(ours: Dict[str, float]) -> str:
    """Where a small call's CPU goes on distautograd's reading threads, stage by stage (transport.frame_cpu)."""
    lines = ["a small call's CPU on distautograd's reading threads, stage by stage (us per call, medians of the "
             "rounds):", "", "| stage | us |", "|---|---|"]
    lines += [f"| {what} | {ours[key]:.0f} |" for key, what in CALL_STAGES if key in ours]
    return "\n".join(lines)


def _paths() -> List[str]:
    """The message paths this process can run: the native one (when the core is built) and Python's."""
    from distautograd import native

    return ["native", "python"] if native.path_on() else ["python"]


@contextlib.contextmanager
def _on_path(path: str):
    """The worlds started inside take ``path`` (the processes inherit DISTAUTOGRAD_NATIVE_PATH)."""
    before = os.environ.get("DISTAUTOGRAD_NATIVE_PATH")
    os.environ["DISTAUTOGRAD_NATIVE_PATH"] = "1" if path == "native" else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["DISTAUTOGRAD_NATIVE_PATH"]
        else:
            os.environ["DISTAUTOGRAD_NATIVE_PATH"] = before


def _print_hops(hop_rounds: Dict[str, List[Dict[str, float]]], chain: dict) -> None:
    from distautograd.bench import breakdown

    stages = [name for name, _, _ in breakdown.STAGES] + [breakdown.HANDED_OVER, "per hop", breakdown.WHOLE_MEDIAN,
                                                           breakdown.WHOLE_MEAN, breakdown.STARTING,
                                                           breakdown.INTO_STARTED, breakdown.SENDING]
    paths = list(hop_rounds)
    counts = ", ".join(f"{sum(int(r['hops']) for r in hop_rounds[p])} hops on the {p} path "
                       f"({sum(int(r['hops that start the part']) for r in hop_rounds[p])} of them starting the part)"
                       for p in paths)
    print(f"\none backward hop through a chain of 4 workers, distautograd (us, medians of "
          f"{len(hop_rounds[paths[0]])} round(s) per path, alternating; {counts}):\n")
    print("| stage | " + " | ".join(paths) + " |")
    print("|---|" + "---|" * len(paths))
    for stage in stages:
        print(f"| {stage} | " + " | ".join(f"{statistics.median(r[stage] for r in hop_rounds[p]):.0f}" for p in paths)
              + " |")
    if len(chain) > 1:  # a hop is half a worker added: each worker is reached, and answers, once per pass
        first, last = min(chain), max(chain)
        for fw in FRAMEWORKS:
            per_worker = (chain[last][fw]["backward_ms"] - chain[first][fw]["backward_ms"]) / (last - first)
            print(f"{fw}, from the chain rows: {per_worker * 1e3 / 2:.0f} us per hop (half the cost of a worker added: "
                  "each worker takes two hops per pass)")


def _rounds_met(target, by_round: List[float]) -> str:
    """For a target against torch's ratio: in how many rounds the round's own ratio met it ("" for others)."""
    if target is None or isinstance(target, list) or target[0] not in ("<=", ">="):
        return ""
    return rounds_of.held(by_round, target[1], at_most=target[0] == "<=")


def _judge(target, ratio: float, value: float, memcpy: float):
    """(the target as shown, "yes"/"no"/"") for one row; a list of targets is met when each is."""
    if target is None:
        return "", ""
    if isinstance(target, list):
        judged = [_judge(one, ratio, value, memcpy) for one in target]
        return ", ".join(shown for shown, _ in judged), "yes" if all(met == "yes" for _, met in judged) else "no"
    kind, bound = target[:2]
    if kind == "memcpy":
        return f">= {bound:g}x memcpy", "yes" if value >= bound * memcpy else "no"
    if kind == "iperf3":  # (kind, share, what iperf3 reached)
        return f">= {bound:g}x iperf3", "yes" if value >= bound * target[2] else "no"
    ok = ratio <= bound if kind == "<=" else ratio >= bound
    return f"{kind} {bound:g}x torch", "yes" if ok else "no"


if __name__ == "__main__":
    sys.exit(main())
