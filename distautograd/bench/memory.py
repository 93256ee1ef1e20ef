"""Resident memory over a long run: the growth from the first checkpoint to the last, and the trend through all of them.

Resident memory moves by a few percent from one checkpoint to the next as the allocator keeps and
returns pages, so the growth between two checkpoints alone cannot tell a leak from that movement.
The trend can: a least-squares line through every checkpoint, read as what it grows over the run.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

FLAT_PERCENT = 5.0


def checkpoints(first: int, steps: int, count: int = 10) -> List[int]:
    """``count`` steps, evenly spaced from ``first`` to ``steps`` (both included)."""
    spacing = (steps - first) / (count - 1)
    return sorted({first + round(spacing * i) for i in range(count)})


def trend_percent(points: Sequence[Tuple[int, float]]) -> float:
    """What a least-squares line through (step, MiB) grows from the first step to the last, in % of
    its value at the first."""
    n = len(points)
    mean_step = sum(s for s, _ in points) / n
    mean_mib = sum(m for _, m in points) / n
    spread = sum((s - mean_step) ** 2 for s, _ in points)
    slope = sum((s - mean_step) * (m - mean_mib) for s, m in points) / spread
    first, last = points[0][0], points[-1][0]
    start = mean_mib + slope * (first - mean_step)
    return slope * (last - first) / start * 100


def report(results: Dict[str, Dict[str, float]], frameworks: Sequence[str], names: Sequence[str],
           steps: Sequence[int]) -> None:
    """Prints each process's memory at the first and last checkpoint, its peak, the growth and the trend,
    and whether distautograd's stays flat (growth and trend within FLAT_PERCENT)."""
    print(f"\nresident memory (MiB) from step {steps[0]} to step {steps[-1]}, {len(steps)} checkpoints:\n")
    print("| framework | process | first | last | peak | growth | trend |")
    print("|---|---|---|---|---|---|---|")
    flat = True
    for fw in frameworks:
        for name in names:
            points = [(step, results[fw][f"{name}@{step}"]) for step in steps]
            first, last = points[0][1], points[-1][1]
            growth, trend = (last - first) / first * 100, trend_percent(points)
            if fw == "distautograd":
                flat = flat and abs(growth) <= FLAT_PERCENT and abs(trend) <= FLAT_PERCENT
            print(f"| {fw} | {name} | {first:.0f} | {last:.0f} | {max(m for _, m in points):.0f} | "
                  f"{growth:+.1f}% | {trend:+.1f}% |")
    print(f"\ntarget: distautograd's resident memory flat (growth and trend within {FLAT_PERCENT:g}%) from step "
          f"{steps[0]} on: {'met' if flat else 'not met'}")
