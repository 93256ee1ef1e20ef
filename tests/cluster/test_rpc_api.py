"""The rpc API with torch semantics, against a real coordinator and worker processes."""

import gc
import time

import pytest
import torch

from distautograd import rpc
from distautograd.errors import DeadlineExceeded, PermissionDenied, RemoteError
from tests.helpers import remote
from tests.helpers.processes import poll_for

pytestmark = pytest.mark.usefixtures("trainer")


def test_rpc_sync_with_name_rank_and_workerinfo(cluster):
    w1 = cluster.worker("worker1")
    info = rpc.get_worker_info("worker1")
    assert info == rpc.WorkerInfo("worker1", w1.rank) and info.id == w1.rank
    for to in ("worker1", w1.rank, info):
        assert torch.equal(rpc.rpc_sync(to, torch.add, args=(torch.ones(2), 3)), torch.full((2,), 4.0))


def test_kwargs_and_containers():
    out = rpc.rpc_sync("worker2", remote.echo, kwargs={"x": {"a": [torch.ones(1), (2, "s")], "b": None}})
    assert torch.equal(out["a"][0], torch.ones(1)) and out["a"][1] == (2, "s") and out["b"] is None


def test_the_same_tensor_twice_arrives_as_one_object():
    t = torch.arange(3.0)
    a, b = rpc.rpc_sync("worker1", remote.echo, args=((t, t),))
    assert a is b and torch.equal(a, t)


def test_rpc_async_returns_a_torch_future_that_chains():
    fut = rpc.rpc_async("worker1", torch.add, args=(torch.ones(2), 1))
    assert isinstance(fut, torch.futures.Future)
    chained = fut.then(lambda f: f.wait() * 10)
    assert torch.equal(chained.wait(), torch.full((2,), 20.0))
    futs = [rpc.rpc_async("worker2", remote.add, args=(i, i)) for i in range(10)]
    assert torch.futures.wait_all(futs) == [
        2 * i for i in range(10)
    ]


def test_calls_to_self(trainer):
    assert rpc.rpc_sync("trainer", remote.add, args=(2, 3)) == 5
    assert rpc.rpc_sync(trainer.id, remote.whoami) == trainer
    rref = rpc.remote("trainer", remote.add, args=(torch.ones(2), 1))
    assert rref.is_owner() and torch.equal(rref.local_value(), torch.full((2,), 2.0))


def test_nested_calls_from_inside_called_functions():
    assert rpc.rpc_sync("worker1", remote.nested_add, args=("worker2", 1, 2)) == 3
    # worker1 calls back into this process while this call is still open
    assert rpc.rpc_sync("worker1", remote.call_back, args=("trainer", remote.add, (4, 5))) == 9


def test_async_execution_answers_later_without_a_thread():
    x, y, z = torch.ones(2), torch.ones(2) * 2, torch.ones(2) * 3
    out = rpc.rpc_sync("worker1", remote.async_add_chained, args=("worker2", x, y, z))
    assert torch.equal(out, x + y + z)
    with pytest.raises(RuntimeError, match="must return a torch.futures.Future object"):  # torch's type and words
        rpc.rpc_sync("worker1", remote.async_not_a_future)


def test_remote_exceptions_keep_type_message_traceback_and_worker():
    with pytest.raises(ValueError) as err:
        rpc.rpc_sync("worker2", remote.raise_value_error, args=("the answer is wrong",))
    text = str(err.value)
    assert "the answer is wrong" in text and "worker2" in text and "raise_value_error" in text
    assert err.value.worker == "worker2" and "Traceback" in err.value.remote_traceback


def test_an_error_passed_back_through_a_chain_of_calls_is_said_once_per_worker_not_quoted_again():
    # KeyError's str() quotes its message: taken as the message at each hop, it was quoted and escaped
    # again at every worker it passed (a 3-hop KeyError read \\\\\\\' for each quote).
    with pytest.raises(KeyError) as err:
        rpc.rpc_sync("worker1", remote.look_up_through, args=(["worker2", "trainer"], "missing"))
    message = err.value.args[0]
    # said where it was raised (its message, then its traceback's last line), and named at each worker after
    assert "\\" not in message and message.count("'missing'") == 2, message
    assert [line for line in message.splitlines() if "as raised on" in line] == [
        "KeyError: as raised on worker 'trainer', above", "KeyError: as raised on worker 'worker2', above"], message
    assert [line for line in message.splitlines() if line.startswith("Raised on")] == [
        "Raised on worker 'trainer'; remote traceback:", "Raised on worker 'worker2'; remote traceback:",
        "Raised on worker 'worker1'; remote traceback:"], message


def test_exceptions_that_cannot_be_rebuilt_become_remote_errors():
    with pytest.raises(RemoteError, match="NeedsTwoArgs"):
        rpc.rpc_sync("worker1", remote.raise_custom)


def test_result_that_cannot_be_sent_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="cannot send Unpicklable"):
        rpc.rpc_sync("worker1", remote.return_unpicklable, timeout=10)


def test_unknown_worker_lists_the_known_ones():
    # torch raises RuntimeError("... could not find destination ..."); it stays a ValueError too, as it was here
    with pytest.raises(RuntimeError, match=r"could not find destination worker 'nobody': known workers are "
                                           r".*worker1 \(rank") as err:
        rpc.rpc_sync("nobody", remote.add, args=(1, 2))
    assert isinstance(err.value, ValueError)
    with pytest.raises(RuntimeError, match="rank 999"):
        rpc.rpc_async(999, remote.add, args=(1, 2))
    with pytest.raises(RuntimeError, match="could not find destination"):
        rpc.get_worker_info("nobody")
    with pytest.raises(ValueError, match="Cannot get WorkerInfo"):  # as torch: a destination of another type
        rpc.rpc_async(1.5, remote.add, args=(1, 2))


def test_timeouts_per_call_and_zero_means_none():
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="within the timeout of 0.3 s") as err:
        rpc.rpc_sync("worker1", remote.sleep, args=(2,), timeout=0.3)
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, TimeoutError)  # as the README says
    assert time.monotonic() - start < 1.5
    assert rpc.rpc_sync("worker1", remote.sleep, args=(0.2,), timeout=0) == 0.2
    with pytest.raises(ValueError, match="timeout"):
        rpc.rpc_sync("worker1", remote.add, args=(1, 1), timeout=-5)


def test_a_slow_call_does_not_block_others():
    slow = rpc.rpc_async("worker2", remote.sleep, args=(1.0,))
    start = time.monotonic()
    assert rpc.rpc_sync("worker2", remote.add, args=(1, 1)) == 2
    assert time.monotonic() - start < 0.8
    assert slow.wait() == 1.0


class TestRRef:
    def test_remote_to_here_and_owner(self, cluster):
        rref = rpc.remote("worker1", torch.add, args=(torch.ones(2), 3))
        assert torch.equal(rref.to_here(), torch.full((2,), 4.0))
        assert rref.owner() == rpc.get_worker_info("worker1") and rref.owner_name() == "worker1"
        assert not rref.is_owner() and rref.confirmed_by_owner()
        with pytest.raises(RuntimeError, match=r"can't call localValue\(\) on user .*Call it on owner"):
            rref.local_value()

    def test_local_rref(self):
        rref = rpc.RRef(torch.ones(3))
        assert rref.is_owner() and rref.confirmed_by_owner() and torch.equal(rref.to_here(), torch.ones(3))

    def test_rrefs_as_arguments_to_the_owner_and_to_third_parties(self):
        rref = rpc.remote("worker1", torch.ones, args=(2,))
        assert rpc.rpc_sync("worker1", remote.rref_local_sum, args=(rref,)) == 2  # back to its owner
        assert torch.equal(rpc.rpc_sync("worker2", remote.rref_value_plus, args=(rref, 1)), torch.full((2,), 2.0))
        local = rpc.RRef(torch.full((2,), 5.0))
        assert torch.equal(rpc.rpc_sync("worker2", remote.rref_value_plus, args=(local, 1)), torch.full((2,), 6.0))

    def test_rref_returned_from_a_call(self):
        rref = rpc.rpc_sync("worker2", remote.make_rref, args=(torch.ones(1),))
        assert rref.owner_name() == "worker2" and torch.equal(rref.to_here(), torch.ones(1))

    def test_proxies(self):
        counter = rpc.remote("worker2", remote.Counter, args=(10,))
        assert counter.rpc_sync().increment(5) == 15
        assert counter.rpc_async().increment().wait() == 16
        assert counter.remote().get().to_here() == 16
        assert counter.rpc_sync().add_later(4) == 20  # an async_execution method
        with pytest.raises(PermissionDenied, match="public methods"):
            getattr(counter.rpc_sync(), "__init__.__globals__")()  # dunders could reach any global of the owner
        with pytest.raises(PermissionDenied, match="refused to call Counter._lock"):
            counter.rpc_sync()._lock()  # an attribute, not a method of the class

    def test_remote_failure_shows_at_to_here(self):
        rref = rpc.remote("worker1", remote.raise_value_error, args=("no value",))
        with pytest.raises(ValueError, match="no value"):
            rref.to_here()

    def test_a_remote_that_failed_to_start_fails_every_later_use(self):
        import subprocess

        rref = rpc.remote("worker1", subprocess.call, args=(["true"],))  # refused by the allowlist
        with pytest.raises(PermissionDenied, match="subprocess.call"):
            rpc.rpc_sync("worker1", remote.rref_local_sum, args=(rref,), timeout=10)
        with pytest.raises(PermissionDenied, match="subprocess.call"):
            rref.to_here(timeout=10)

    def test_owner_drops_the_value_when_no_holder_is_left(self):
        rrefs = [rpc.remote("worker1", torch.zeros, args=(1000,)) for _ in range(5)]
        for r in rrefs:
            r.to_here()
        forwarded = rpc.rpc_sync("worker2", remote.rref_value_plus, args=(rrefs[0], 1))  # a third-party fork
        assert forwarded.shape == (1000,)
        ids = [r._id for r in rrefs]
        assert rpc.rpc_sync("worker1", remote.still_owned, args=(ids,)) == [True] * 5
        del rrefs, r
        gc.collect()
        assert poll_for(lambda: rpc.rpc_sync("worker1", remote.still_owned, args=(ids,)) == [False] * 5)


def test_status_command_lists_workers(cluster, capsys):
    from distautograd.cli import main

    assert main(["status", "--coordinator", cluster.coordinator]) == 0
    out = capsys.readouterr().out
    for name in ("worker1", "worker2", "trainer"):
        assert name in out
    assert "open contexts" in out
    from distautograd import native

    lines = [line for line in out.splitlines() if line.startswith(("worker1 ", "worker2 "))]
    assert len(lines) == 2 and all(f" {native.message_path()} " in line for line in lines), out  # which path each runs


def test_health_of_every_process(cluster, capsys):
    from distautograd.cli import main

    for address in [cluster.coordinator] + [w.address for w in cluster.workers]:
        assert main(["health", address]) == 0
        assert "SERVING" in capsys.readouterr().out
    assert main(["health", cluster.coordinator, "--service", "distautograd.v1.Coordinator"]) == 0
