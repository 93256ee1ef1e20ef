"""Gathering a value from every worker, as torch.distributed.rpc.api._all_gather does: user code and torch's own tests use it.

Every worker calls it in the same order; the one with the smallest name collects each round's
values and answers each caller with all of them once the last has arrived.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List

import torch

from distautograd.encoding.allowlist import trusted_global
from distautograd.runtime.remote_methods import ASYNC_ATTR

_lock = threading.Lock()
_rounds: Dict[int, dict] = {}  # round -> {"values": {name: value}, "expected": n, "done": Future}
_next_round = 0


def next_round() -> int:
    global _next_round
    with _lock:
        _next_round += 1
        return _next_round


@trusted_global
def gather(round_id: int, name: str, value: Any, expected: int) -> torch.futures.Future:
    """On the collecting worker: this worker's value for round ``round_id``; answers with them all."""
    with _lock:
        entry = _rounds.setdefault(round_id, {"values": {}, "expected": expected, "done": torch.futures.Future()})
        entry["values"][name] = value
        complete = len(entry["values"]) >= entry["expected"]
        if complete:
            del _rounds[round_id]
    if complete:
        entry["done"].set_result(dict(entry["values"]))
    return entry["done"]


setattr(gather, ASYNC_ATTR, True)


def leader(names: List[str]) -> str:
    return sorted(names)[0]
