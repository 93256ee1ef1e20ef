"""The bench's memory verdict: growth from the first checkpoint to the last, and the trend through all of them."""

import pytest

from distautograd.bench import memory

STEPS = memory.checkpoints(1_000, 10_000)


def test_checkpoints_are_evenly_spaced_and_include_both_ends():
    assert STEPS == list(range(1_000, 10_001, 1_000))
    assert memory.checkpoints(30, 300) == list(range(30, 301, 30))


def test_the_trend_is_what_a_line_through_the_points_grows_over_the_run():
    assert memory.trend_percent([(s, 100 + s / 1_000) for s in STEPS]) == pytest.approx(9 / 101 * 100)
    # up and down by 4% (first 96, last 104): a trend of about 2%, where the first and last alone say 8%
    assert memory.trend_percent([(s, 100 + (4 if i % 2 else -4)) for i, s in enumerate(STEPS)]) == pytest.approx(
        2.21, abs=0.01)


def results(*series):
    return {"torch": {f"p@{s}": 100.0 for s in STEPS},
            "distautograd": {f"p@{s}": value for s, value in zip(STEPS, series)}}


@pytest.mark.parametrize("series, verdict", [
    ([100.0] * 10, "met"),
    ([100, 103, 99, 104, 100, 102, 99, 103, 101, 104], "met"),  # movement, no growth
    ([100 + 0.7 * i for i in range(10)], "not met"),  # a steady leak: +6.3% by the end
    ([100] * 9 + [107], "not met"),  # the last checkpoint alone jumps: growth says so
], ids=["flat", "noise", "leak", "jump at the end"])
def test_the_verdict_needs_both_growth_and_trend_within_five_percent(series, verdict, capsys):
    memory.report(results(*series), ["torch", "distautograd"], ["p"], STEPS)
    out = capsys.readouterr().out
    assert out.rstrip().endswith(f": {verdict}"), out
    assert "| distautograd | p | 100 |" in out and "| torch | p | 100 | 100 | 100 | +0.0% | +0.0% |" in out
