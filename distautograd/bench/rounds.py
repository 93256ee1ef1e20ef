"""How far each ratio to torch moves from one round of the bench to the next, beside the median the table judges.

Every round runs both frameworks back to back (``measure`` alternates who goes first), so the ratio of one
round compares runs made minutes apart, and the spread of the rounds' ratios says how much of a median's
verdict is this machine's noise: a target met by the median but missed in a round is not met for sure.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

ROUNDS = "rounds"  # the key of a measurement's per-round values: {framework: {key: [one value per round]}}
FRAMEWORKS = ("torch", "distautograd")  # what every measurement runs, in the order its first round runs them

Measured = Dict[str, dict]


def keep(medians: Measured, samples: Dict[str, Dict[str, List[float]]]) -> Measured:
    """``medians`` with every framework's per-round values kept beside them (under ROUNDS)."""
    return {**medians, ROUNDS: samples}


def ratios(measured: Measured, key: str) -> List[float]:
    """distautograd's value over torch's for ``key``, round by round; [] where the rounds were not kept."""
    kept = measured.get(ROUNDS)
    if not kept:
        return []
    pairs = zip(kept["torch"].get(key, []), kept["distautograd"].get(key, []))
    return [ours / theirs if theirs else math.nan for theirs, ours in pairs]


def growth(by_size: Dict[int, Measured], first: int, last: int, key: str) -> Measured:
    """What each framework's ``key`` grows by per step from size ``first`` to ``last`` (per worker added to a
    chain, say) as a measurement of its own: from the medians, and round by round where the rounds were kept."""
    medians = {fw: {key: (by_size[last][fw][key] - by_size[first][fw][key]) / (last - first)} for fw in FRAMEWORKS}
    if ROUNDS not in by_size[first] or ROUNDS not in by_size[last]:
        return medians
    samples = {fw: {key: [(high - low) / (last - first) for low, high in zip(
        by_size[first][ROUNDS][fw][key], by_size[last][ROUNDS][fw][key])]} for fw in FRAMEWORKS}
    return keep(medians, samples)


def span(values: Sequence[float]) -> str:
    """The rounds' ratios as the table shows them: "lo-hi", the one value of a single round, or ""."""
    if not values:
        return ""
    low, high = min(values), max(values)
    return f"{low:.2f}" if len(values) == 1 or low == high else f"{low:.2f}-{high:.2f}"


def held(values: Sequence[float], bound: float, at_most: bool) -> str:
    """How many rounds' ratios meet ``bound`` ("2/3"), or "" with no rounds kept."""
    if not values:
        return ""
    return f"{sum(1 for v in values if (v <= bound if at_most else v >= bound))}/{len(values)}"

