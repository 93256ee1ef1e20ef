"""The bench's table shows, beside each median ratio, the spread of the rounds' own ratios and in how many
rounds a target was met (bench/rounds.py): a median's verdict that one round contradicts is visible."""

import pytest

from distautograd.bench import __main__ as bench
from distautograd.bench import rounds


def chain_world(times):
    """A stand-in for run_world: the chain's backward in ms, by framework, chain length and round, as
    ``times`` says (each framework's runs of a length come in round order)."""
    calls = {}

    def run_world(framework, workload, names, params, transport="auto"):
        assert workload == "backward_chain"
        n = len(names) - 1
        index = calls[(framework, n)] = calls.get((framework, n), -1) + 1
        return {"backward_ms": times[framework][n][index], "worker_cpu_ms": 1.0}

    return run_world


def table_row(out: str, starts: str) -> list:
    line = next(line for line in out.splitlines() if line.startswith(f"| {starts}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_each_rounds_ratio_and_how_many_rounds_met_the_target_are_shown(monkeypatch, capsys):
    times = {  # three rounds; the chain of 6's median ratio meets its 0.8 target, one round does not
        "torch": {2: [1.0, 1.0, 1.0], 4: [2.0, 2.0, 2.0], 6: [3.0, 3.0, 3.0], 8: [4.0, 4.0, 4.0]},
        "distautograd": {2: [1.0, 1.0, 1.0], 4: [1.5, 1.6, 1.7], 6: [2.1, 3.3, 2.4], 8: [2.8, 4.6, 3.4]},
    }
    monkeypatch.setattr(bench, "run_world", chain_world(times))
    assert bench.main(["--only", "chain", "--rounds", "3"]) == 0
    out = capsys.readouterr().out
    six = table_row(out, "backward through a chain of 6")
    # what, torch, ours, ratio, by round, target, met, rounds met, limit
    assert six[3:8] == ["0.80", "0.70-1.10", "<= 0.8x torch", "yes", "2/3"], six
    added = table_row(out, "  cost of each worker added, 2 to 8")
    # per round: ours (1.8/6, 3.6/6, 2.4/6) against torch's 3/6 each: 0.6, 1.2, 0.8
    assert added[1:4] == ["0.5", "0.4", "0.80"] and added[4:8] == ["0.60-1.20", "<= 1x torch", "yes", "2/3"], added
    two = table_row(out, "backward through a chain of 2")
    assert two[4] == "1.00" and two[7] == "", two  # every round the same; no target


def test_the_spread_and_count_of_a_single_round_and_of_none():
    assert rounds.span([]) == "" and rounds.held([], 0.8, at_most=True) == ""
    assert rounds.span([0.91]) == "0.91" and rounds.held([0.91], 0.8, at_most=True) == "0/1"
    assert rounds.held([1.3, 1.2, 1.25], 1.25, at_most=False) == "2/3"  # a bound met exactly counts
    assert rounds.held([0.5, 0.8, 0.9], 0.8, at_most=True) == "2/3"


def test_a_growth_round_by_round_is_per_step():
    sizes = {n: rounds.keep({fw: {"ms": float(n)} for fw in rounds.FRAMEWORKS},
                            {"torch": {"ms": [n * 1.0, n * 2.0]}, "distautograd": {"ms": [n * 0.5, n * 3.0]}})
             for n in (2, 6)}
    grown = rounds.growth(sizes, 2, 6, "ms")
    assert grown[rounds.ROUNDS] == {"torch": {"ms": [1.0, 2.0]}, "distautograd": {"ms": [0.5, 3.0]}}
    assert grown["torch"] == {"ms": 1.0} and rounds.ratios(grown, "ms") == [0.5, 1.5]


def test_a_growth_from_measurements_without_rounds_has_its_medians_only():
    by_size = {2: {"torch": {"ms": 1.0}, "distautograd": {"ms": 2.0}},
               4: {"torch": {"ms": 3.0}, "distautograd": {"ms": 3.0}}}
    grown = rounds.growth(by_size, 2, 4, "ms")
    assert grown == {"torch": {"ms": 1.0}, "distautograd": {"ms": 0.5}} and rounds.ratios(grown, "ms") == []


@pytest.mark.parametrize("theirs, expected", [(0.0, "nan"), (2.0, "0.50")])
def test_a_round_where_torch_read_zero_has_no_ratio(theirs, expected):
    measured = rounds.keep({}, {"torch": {"k": [theirs]}, "distautograd": {"k": [1.0]}})
    assert f"{rounds.ratios(measured, 'k')[0]:.2f}" == expected
