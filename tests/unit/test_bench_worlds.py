"""The bench's worlds: a port probed free that another process takes before the world listens costs a
retry on another port, not the whole bench run (it once ended a 19-minute run at its chain rows)."""

import pytest
import torch.multiprocessing as mp

from distautograd.bench import __main__ as bench


def starting(outcomes, ports):
    """A stand-in for mp.start_processes that fails as each of ``outcomes`` says (None: the world runs
    and reports), noting the port each world was given."""

    def start(fn, args, nprocs, start_method):
        spec, results = args
        ports.append(spec["port"])
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise mp.ProcessRaisedException(outcome, 0, 1)
        results.put({"ran on": spec["port"]})

    return start


TAKEN = "OSError: cannot listen on 127.0.0.1:45745: Failed to bind to address 127.0.0.1:45745"


def test_a_port_taken_before_the_world_listens_is_tried_again_on_another(monkeypatch, capsys):
    ports = []
    monkeypatch.setattr(mp, "start_processes", starting([TAKEN, "RuntimeError: Address already in use", None], ports))
    assert bench.run_world("distautograd", "latency", ["a", "b"], {}) == {"ran on": ports[-1]}
    assert len(ports) == 3 and "was taken before it could listen" in capsys.readouterr().err


def test_a_port_taken_every_time_or_another_failure_ends_the_run(monkeypatch):
    monkeypatch.setattr(mp, "start_processes", starting([TAKEN] * bench.PORT_TRIES, []))
    with pytest.raises(mp.ProcessRaisedException, match="cannot listen on"):
        bench.run_world("distautograd", "latency", ["a", "b"], {})
    ports = []
    monkeypatch.setattr(mp, "start_processes", starting(["ZeroDivisionError: the workload failed", None], ports))
    with pytest.raises(mp.ProcessRaisedException, match="the workload failed"):
        bench.run_world("distautograd", "latency", ["a", "b"], {})
    assert len(ports) == 1
