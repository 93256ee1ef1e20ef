"""Scenarios run as their own process against a cluster: `python -m tests.drivers NAME COORDINATOR [ARGS]`.

Each joins as 'trainer', checks what it is about, prints "OK <detail>" and exits 0; any failure
exits non-zero with the traceback, so the test that started it shows what went wrong.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch

from distautograd import rpc
from tests import remote

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def join(coordinator: str, **options) -> None:
    options.setdefault("rpc_timeout", 30)
    rpc.init_rpc(
        "trainer",
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
    except RuntimeError as exc:
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
    except Exception as exc:
        assert "UNAUTHENTICATED" in str(exc) or "token" in str(exc), exc
        return f"refused: {str(exc).splitlines()[0]}"
    raise AssertionError("joined with the wrong token")


@scenario
def right_token_works(coordinator: str, token: str) -> str:
    join(coordinator, token=token)
    assert rpc.rpc_sync("worker1", remote.add, args=(1, 2)) == 3
    rpc.shutdown()
    return "called worker1 with the token"


@scenario
def tls_cluster(coordinator: str, cert: str, key: str, ca: str) -> str:
    join(coordinator, tls_cert=cert, tls_key=key, tls_ca=ca, tls_server_name="localhost")
    assert torch.equal(rpc.rpc_sync("worker1", torch.add, args=(torch.ones(2), 1)), torch.full((2,), 2.0))
    assert rpc.rpc_sync("worker1", remote.nested_add, args=("worker2", 1, 2)) == 3
    rpc.shutdown()
    return "calls over mutual TLS"


def main() -> int:
    name, *args = sys.argv[1:]
    print("OK", SCENARIOS[name](*args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
