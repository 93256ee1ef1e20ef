"""Gathering a value from every worker, as torch.distributed.rpc.api._all_gather does: user code and torch's own tests use it.

The workers of a group call it the same number of times, so the n-th call of each is the same
round (counted per group, as torch counts); the worker with the smallest name collects a round's
values and answers each caller with all of them once the last has arrived.
"""

from __future__ import annotations

import threading
import collections
from typing import Any, Dict, Iterable, List

import torch

from distautograd.encoding.allowlist import trusted_global
from distautograd.runtime.remote_methods import ASYNC_ATTR

_lock = threading.Lock()
_rounds: Dict[str, dict] = {}  # round -> {"values": {name: value}, "expected": n, "done": Future}
_calls: "collections.Counter[str]" = collections.Counter()  # rounds this process began, per group


def next_round(kind: str, names: Iterable[str]) -> str:
    """The id of this process's next round of ``kind`` among the workers ``names``."""
    group = f"{kind}:{','.join(sorted(names))}"
    with _lock:
        _calls[group] += 1
        return f"{group}#{_calls[group]}"


@trusted_global
def gather(round_id: str, name: str, value: Any, expected: int) -> torch.futures.Future:
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
