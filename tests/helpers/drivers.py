"""Scenarios run as their own process against a cluster: `python -m tests.helpers.drivers NAME COORDINATOR [ARGS]`.

Each joins as 'trainer', checks what it is about, prints "OK <detail>" and exits 0; any failure
exits non-zero with the traceback, so the test that started it shows what went wrong.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch

from distautograd import errors, rpc
from tests.helpers import remote

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def join(coordinator: str, name: str = "trainer", **options) -> None:
    options.setdefault("rpc_timeout", 30)
    rpc.init_rpc(
        name,
        rpc_backend_options=rpc.BackendOptions(coordinator=coordinator, allowed_modules=["tests"], **options),
    )


@scenario
def dead_peer_fails_fast(coordinator: str, victim: str, victim_pid: str) -> str:
    """A call in flight to a worker that gets SIGKILLed fails at once, naming the worker."""
    join(coordinator, rpc_timeout=60)
    fut = rpc.rpc_async(victim, remote.sleep, args=(30,))
    time.sleep(0.5)
    os.kill(int(victim_pid), signal.SIGKILL)
    start = time.monotonic()
    try:
        fut.wait()
    except errors.Unavailable as exc:
        elapsed = time.monotonic() - start
        assert victim in str(exc), exc
        assert elapsed < 5, elapsed
        later = time.monotonic()
        try:
            rpc.rpc_sync(victim, remote.add, args=(1, 1))
        except (RuntimeError, ValueError) as again:
            assert victim in str(again) and ("died" in str(again) or "lost" in str(again)), again
            assert time.monotonic() - later < 5
        else:
            raise AssertionError("a call to a dead worker succeeded")
        rpc.shutdown(graceful=False)
        return f"failed after {elapsed:.2f}s: {str(exc).splitlines()[0]}"
    raise AssertionError("the call to a killed worker did not fail")


@scenario
def stopped_peer_is_declared_dead(coordinator: str, victim: str, victim_pid: str) -> str:
    """A worker that stops answering (SIGSTOP) without closing its connection: heartbeats catch it."""
    join(coordinator, rpc_timeout=60)
    fut = rpc.rpc_async(victim, remote.sleep, args=(30,))
    time.sleep(0.3)
    os.kill(int(victim_pid), signal.SIGSTOP)
    start = time.monotonic()
    try:
        fut.wait()
    except RuntimeError as exc:
        elapsed = time.monotonic() - start
        assert victim in str(exc) and "heartbeat" in str(exc), exc
        rpc.shutdown(graceful=False)
        return f"failed after {elapsed:.2f}s: {str(exc).splitlines()[0]}"
    finally:
        os.kill(int(victim_pid), signal.SIGCONT)
    raise AssertionError("the call to a stopped worker did not fail")


@scenario
def wrong_token_is_refused(coordinator: str, worker: str) -> str:
    try:
        join(coordinator, token="not-the-token", init_timeout=5)
    except errors.Unauthenticated as exc:
        assert "token" in str(exc), exc
        return f"refused: {str(exc).splitlines()[0]}"
    raise AssertionError("joined with the wrong token")


@scenario
def right_token_works(coordinator: str, token: str) -> str:
    join(coordinator, token=token)
    assert rpc.rpc_sync("worker1", remote.add, args=(1, 2)) == 3
    rpc.shutdown()
    return "called worker1 with the token"


@scenario
def tls_cluster(coordinator: str, cert: str, key: str, ca: str, expected_wire: str = "unix") -> str:
    """Calls in a TLS world (``ca`` empty: server-only TLS). No process listens on plain TCP, so with
    transport="tcp" (DISTAUTOGRAD_TRANSPORT) calls go over gRPC, through TLS."""
    from distautograd.runtime.current import get as current_agent

    join(coordinator, tls_cert=cert, tls_key=key, tls_ca=ca or None, tls_server_name="localhost")
    assert torch.equal(rpc.rpc_sync("worker1", torch.add, args=(torch.ones(2), 1)), torch.full((2,), 2.0))
    assert rpc.rpc_sync("worker1", remote.nested_add, args=("worker2", 1, 2)) == 3
    world = current_agent().world
    advertised = [world.entry(rpc.get_worker_info(w).id).socket_address for w in ("worker1", "worker2")]
    assert advertised == ["", ""], f"a TLS worker offers plain TCP: {advertised}"
    assert remote.wire_to("worker1") == expected_wire, remote.wire_to("worker1")
    rpc.shutdown()
    return f"calls over {'mutual ' if ca else 'server-only '}TLS, over {expected_wire}"


@scenario
def worker_killed_during_backward(coordinator: str, victim: str, victim_pid: str) -> str:
    """worker2's backward function sleeps; it is killed meanwhile; backward must raise naming it,
    and the survivors must free the context."""
    import threading

    from distautograd import autograd as dist_autograd

    join(coordinator, rpc_timeout=20)
    w = torch.randn(3, requires_grad=True)
    with dist_autograd.context() as context_id:
        y = rpc.rpc_sync(victim, remote.slow_in_backward, args=(w,))
        z = rpc.rpc_sync("worker1", torch.exp, args=(y,))
        threading.Timer(1.0, os.kill, args=(int(victim_pid), signal.SIGKILL)).start()
        start = time.monotonic()
        try:
            dist_autograd.backward(context_id, [z.sum()])
        except RuntimeError as exc:
            elapsed = time.monotonic() - start
            assert victim in str(exc) and ("died" in str(exc) or "lost" in str(exc)), exc
            assert "Raised on" not in str(exc) and "traceback" not in str(exc), exc  # it raised nothing: it died
            assert 0.9 <= elapsed < 4, elapsed  # killed after 1 s: the pass fails as the connection drops
        else:
            raise AssertionError("backward succeeded although a worker died")
    deadline = time.monotonic() + 10
    while context_id in rpc.rpc_sync("worker1", remote.context_ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert context_id not in rpc.rpc_sync("worker1", remote.context_ids), "worker1 kept the context"
    info = rpc.rpc_sync("worker1", remote.debug_info)
    assert info == {"num_autograd_contexts": 0, "num_current_backward_passes": 0}, info
    rpc.shutdown(graceful=False)
    return f"backward failed after {elapsed:.2f}s naming {victim}; worker1 cleaned up"


@scenario
def hung_backward_fails_by_timeout(coordinator: str, victim: str, victim_pid: str, how: str) -> str:
    """``victim``'s backward function takes 5 s. how="slow": the pass fails when the rpc timeout (2 s)
    runs out; how="stopped": the victim is SIGSTOPped mid-pass and the pass fails when its heartbeat
    timeout (2 s) runs out, naming it. Either way the context can be left and worker1 keeps serving."""
    import threading

    from distautograd import autograd as dist_autograd

    join(coordinator, rpc_timeout=2 if how == "slow" else 30)
    w = torch.randn(3, requires_grad=True)
    with dist_autograd.context() as context_id:
        y = rpc.rpc_sync(victim, remote.slow_in_backward, args=(w,))
        if how == "stopped":
            threading.Timer(0.5, os.kill, args=(int(victim_pid), signal.SIGSTOP)).start()
        start = time.monotonic()
        try:
            dist_autograd.backward(context_id, [y.sum()])
        except RuntimeError as exc:
            elapsed = time.monotonic() - start
            if how == "slow":
                assert isinstance(exc, errors.DeadlineExceeded), repr(exc)
                assert "did not finish within 2 s" in str(exc), exc
                assert 1.9 <= elapsed < 3.5, elapsed
            else:
                assert victim in str(exc) and "heartbeat" in str(exc), exc
                assert 2.0 <= elapsed < 5.5, elapsed  # stopped at 0.5 s, silent for 2 s, a beat's worth late
        else:
            raise AssertionError("backward returned although a worker hung in it")
    if how == "stopped":
        os.kill(int(victim_pid), signal.SIGCONT)
    assert rpc.rpc_sync("worker1" if victim != "worker1" else "worker2", remote.add, args=(1, 2)) == 3
    rpc.shutdown(graceful=False)
    return f"backward failed after {elapsed:.2f}s ({how})"


@scenario
def creator_dies_holding_a_context(coordinator: str) -> str:
    from distautograd import autograd as dist_autograd

    rpc.init_rpc("creator", rpc_backend_options=rpc.BackendOptions(coordinator=coordinator, allowed_modules=["tests"]))
    ctx = dist_autograd.context()
    context_id = ctx.__enter__()
    rpc.rpc_sync("worker1", torch.exp, args=(torch.ones(2, requires_grad=True),))
    print(f"OK context {context_id} open on worker1; dying", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


@scenario
def orphaned_context_is_released(coordinator: str, ttl: str, died_at: str) -> str:
    """The context of a creator that died at ``died_at`` (wall clock) lives until the TTL, then goes."""
    join(coordinator)
    ttl_s, died = float(ttl), float(died_at)
    assert rpc.rpc_sync("worker1", remote.debug_info)["num_autograd_contexts"] == 1, "released before its TTL"
    checked = time.time() - died
    while rpc.rpc_sync("worker1", remote.debug_info)["num_autograd_contexts"] and time.time() - died < ttl_s + 10:
        time.sleep(0.05)
    released = time.time() - died
    info = rpc.rpc_sync("worker1", remote.debug_info)
    assert info["num_autograd_contexts"] == 0, info
    assert ttl_s - 0.5 <= released <= ttl_s + 3, f"released {released:.2f} s after the creator died (ttl {ttl_s} s)"
    rpc.shutdown(graceful=False)
    return f"still there {checked:.1f}s after, released {released:.1f}s after the creator died (ttl {ttl}s)"


@scenario
def short_lived_trainer(coordinator: str) -> str:
    """Creates and frees RRefs and a context on worker1, then leaves; run twice, the second life must work."""
    from distautograd import autograd as dist_autograd

    join(coordinator, "short-lived")
    rref = rpc.remote("worker1", remote.add, args=(torch.ones(2), 1))
    assert torch.equal(rref.to_here(), torch.full((2,), 2.0))
    del rref
    with dist_autograd.context() as context_id:
        loss = rpc.rpc_sync("worker1", torch.exp, args=(torch.ones(2, requires_grad=True),)).sum()
        dist_autograd.backward(context_id, [loss])
    rpc.shutdown(graceful=False)  # the rest of the cluster stays
    return "trainer done"


@scenario
def concurrent_trainers(coordinator: str, name: str, threads: str, iterations: str) -> str:
    """Many threads, each with its own contexts, against one parameter server: no gradient mixes."""
    import threading

    from distautograd import autograd as dist_autograd

    rpc.init_rpc(name, rpc_backend_options=rpc.BackendOptions(
        coordinator=coordinator, allowed_modules=["tests"], rpc_timeout=120, num_worker_threads=32))
    weight = rpc.rpc_sync("ps", remote.ps_weight)
    failures = []

    def trainer(t: int) -> None:
        try:
            for i in range(int(iterations)):
                scale = float(t + 1 + i)
                x = torch.full((8,), scale, requires_grad=True)
                with dist_autograd.context() as context_id:
                    y = rpc.rpc_sync("ps", remote.ps_forward, args=(x,))
                    dist_autograd.backward(context_id, [y * scale])
                    assert torch.equal(dist_autograd.get_gradients(context_id)[x], weight * scale)
                    ps_grad = rpc.rpc_sync("ps", remote.ps_weight_grad, args=(context_id,))
                    assert torch.equal(ps_grad, x.detach() * scale), (t, i, ps_grad)
        except BaseException as exc:
            failures.append(f"thread {t}: {exc!r}")

    start = time.monotonic()
    pool = [threading.Thread(target=trainer, args=(t,)) for t in range(int(threads))]
    for th in pool:
        th.start()
    for th in pool:
        th.join(180)
    assert not failures, failures[:3]
    passes = int(threads) * int(iterations)
    rpc.shutdown(graceful=False)
    return f"{name}: {passes} passes in {time.monotonic() - start:.1f}s"


@scenario
def every_path_works(coordinator: str, expected_wire: str, shared: str, expected_back: str = "") -> str:
    """Calls, big tensors both ways, RRefs and a backward pass over whatever path this process uses."""
    import gc

    from distautograd import autograd as dist_autograd

    join(coordinator)
    assert remote.wire_to("worker1") == expected_wire, remote.wire_to("worker1")
    back_wire = rpc.rpc_sync("worker1", remote.wire_to, args=("trainer",))
    assert back_wire == (expected_back or expected_wire), back_wire
    assert rpc.rpc_sync("worker1", remote.add, args=(1, 2)) == 3
    big = torch.randn(16 << 20)  # 64 MiB
    total, shape, dtype = rpc.rpc_sync("worker1", remote.checksum, args=(big,))
    assert shape == big.shape and dtype == big.dtype and total == big.double().sum().item()
    many = [torch.full((1 << 18,), float(i)) for i in range(70)]  # more than 64 of 1 MiB, as a ResNet50's state
    assert all(torch.equal(a, b) for a, b in zip(rpc.rpc_sync("worker1", remote.echo, args=(many,)), many))
    back = rpc.rpc_sync("worker1", remote.big_tensor, args=(64,))
    assert torch.equal(back, torch.arange(64 << 18, dtype=torch.float32))
    back.add_(1)  # received tensors are writable, shared memory or not
    rref = rpc.remote("worker1", remote.big_tensor, args=(8,))
    assert torch.equal(rpc.rpc_sync("worker2", remote.rref_value_plus, args=(rref, 0)), remote.big_tensor(8))
    # Buffers received into are reused once free, never while a tensor still uses them.
    futures = [rpc.rpc_async("worker1", remote.keep_and_check, args=(torch.full((1 << 19,), float(i)), i)) for i in range(16)]
    assert all(f.wait() for f in futures), "a received tensor changed while it was held"
    held = [rpc.rpc_sync("worker1", remote.filled, args=(2, i)) for i in range(16)]
    assert all(bool((t == i).all()) for i, t in enumerate(held)), "a received tensor was overwritten by a later one"
    del held
    w = torch.randn(1 << 20, requires_grad=True)
    with dist_autograd.context() as context_id:
        out = rpc.rpc_sync("worker1", torch.exp, args=(w,))
        sent, loss = out.detach().clone(), out.sum()
        del out  # its received buffer may now carry the gradient back: pooled buffers must not alias
        dist_autograd.backward(context_id, [loss])
        got = dist_autograd.get_gradients(context_id)[w]
        # d/dw sum(exp(w)) is exp(w) as worker1 computed it, times exactly 1: equal bit for bit. An exp
        # computed here is only a sanity check: in about one process in ten, torch's exp of this
        # size differs by up to 2e-4 relative in the half its second OpenMP thread computes.
        assert torch.equal(got, sent), f"gradient differs at {int((got != sent).sum())} of {got.numel()} places"
        assert torch.allclose(got, w.detach().exp(), rtol=1e-3)
    del back, rref, loss, got
    gc.collect()
    use = lambda: (remote.shared_memory_use(), rpc.rpc_sync("worker1", remote.shared_memory_use))
    deadline = time.monotonic() + 10
    while any(lent for _, lent in use()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(lent for _, lent in use()), f"shared segments still lent: {use()}"
    made = [made for made, _ in use()]
    if shared != "either":
        assert all(made) if shared == "1" else not any(made), f"shared segments made: {made}"
    rpc.shutdown()
    return f"all calls over {expected_wire}"


@scenario
def worker_flags_took_effect(coordinator: str, limit: str) -> str:
    """Workers started with --shared-memory off --max-message-bytes LIMIT: a big tensor between them goes
    through the socket with no segment made; a message over the limit is refused at once, naming it."""
    join(coordinator, shared_memory=False)  # this side sends through the connection: the limit applies
    limit_bytes = int(limit)
    assert rpc.rpc_sync("worker1", remote.wire_to, args=("worker2",)) == "unix"
    big = torch.arange(limit_bytes // 8, dtype=torch.float32)  # half the limit, and above the 1 MiB of shared memory
    assert rpc.rpc_sync("worker1", remote.call_back, args=("worker2", remote.checksum, (big,)))[0] == big.double().sum().item()
    assert rpc.rpc_sync("worker1", remote.shared_memory_use) == (0, 0), "worker1 made shared segments"
    start = time.monotonic()
    try:
        rpc.rpc_sync("worker1", remote.checksum, args=(torch.zeros(limit_bytes // 4 + 1),))
    except errors.ResourceExhausted as exc:
        assert f"limit of {limit_bytes} bytes" in str(exc), exc
        assert time.monotonic() - start < 5, "refused only after a wait"
    else:
        raise AssertionError("a message over --max-message-bytes was taken")
    assert rpc.rpc_sync("worker1", remote.add, args=(1, 2)) == 3  # and it goes on serving
    rpc.shutdown(graceful=False)
    return "flags took effect"


@scenario
def forks_of_a_dead_worker_are_dropped(coordinator: str, holder: str, holder_pid: str) -> str:
    """An RRef owned by worker1 whose only fork is held by ``holder``: the value lives while the holder
    does, and is freed once the holder is killed."""
    import gc

    join(coordinator)
    rref = rpc.remote("worker1", torch.zeros, args=(1000,))
    rref.to_here()
    rref_id = rref._id
    assert rpc.rpc_sync(holder, remote.hold, args=(rref,)) == 1
    del rref
    gc.collect()
    time.sleep(1.0)  # the trainer's release has long arrived: the holder's fork alone keeps the value
    assert rpc.rpc_sync("worker1", remote.still_owned, args=([rref_id],)) == [True], "freed while a fork is held"
    os.kill(int(holder_pid), signal.SIGKILL)
    start = time.monotonic()
    while rpc.rpc_sync("worker1", remote.still_owned, args=([rref_id],)) == [True] and time.monotonic() - start < 10:
        time.sleep(0.05)
    elapsed = time.monotonic() - start
    assert rpc.rpc_sync("worker1", remote.still_owned, args=([rref_id],)) == [False], "the dead holder's fork kept it"
    rpc.shutdown(graceful=False)
    return f"freed {elapsed:.2f}s after its holder died"


@scenario
def calls_every_worker(coordinator: str, name: str, *workers: str) -> str:
    """Joins under ``name`` and calls each worker once (after a coordinator came back, say)."""
    join(coordinator, name, init_timeout=20)
    for worker in workers:
        assert rpc.rpc_sync(worker, remote.add, args=(1, 2)) == 3, worker
    ranks = {w: rpc.get_worker_info(w).id for w in (name, *workers)}
    rpc.shutdown(graceful=False)
    return " ".join(f"{w}={r}" for w, r in ranks.items())


def main() -> int:
    name, *args = sys.argv[1:]
    print("OK", SCENARIOS[name](*args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
