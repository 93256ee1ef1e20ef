"""One process of a benchmark world: joins, runs the workload if it is rank 0, leaves.

Run by the runner through torch.multiprocessing, or as ``python -m distautograd.bench.rank SPEC``
inside a network namespace (SPEC is JSON); rank 0 prints ``RESULT <json>``.
"""

from __future__ import annotations

import json
import sys
from typing import Optional


def run_rank(spec: dict, rank: int) -> Optional[dict]:
    torch_threads = spec.get("torch_threads", 1)
    import torch

    torch.set_num_threads(torch_threads)
    from distautograd.bench import workloads
    from distautograd.bench.frameworks import load

    workloads.set_framework(spec["framework"])
    fw = load(spec["framework"])
    names = spec["names"]
    fw.init(names[rank], rank, len(names), spec["port"], spec.get("transport", "auto"))
    result = None
    try:
        if rank == 0:
            result = getattr(workloads, spec["workload"])(fw, **spec["params"])
    finally:
        fw.rpc.shutdown()
    return result


def spawn_entry(rank: int, spec: dict, results) -> None:
    result = run_rank(spec, rank)
    if rank == 0:
        results.put(result)


def main() -> int:
    spec = json.loads(sys.argv[1])
    result = run_rank(spec, int(sys.argv[2]))
    if result is not None:
        print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
