"""Metrics and the coordinator's status JSON, read over real HTTP from agents started with metrics_port:
counters grow by what was done (read with prometheus-client's own parser), the port refuses
strangers beyond loopback, and bad paths get a page saying what exists."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from distautograd import errors
from distautograd.transport.http import HttpServer
from distautograd.transport.security import Security
from tests.helpers.inprocess import AGENTS, World, backward, call, context, gradients
from distautograd.runtime import codec
from tests.inprocess.test_backward import chain_sum_then_exp_on, fails_in_backward

NAMES = ["m0", "m1", "m2"]


@pytest.fixture(scope="module")
def world():
    world = World(NAMES, rpc_timeout=5, metrics_port=0)
    yield world
    world.close()


def get(port: int, path: str, token: str = "", authorization: str = "") -> tuple:
    authorization = authorization or (f"Bearer {token}" if token else "")
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.headers.get("Content-Type"), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type"), exc.read()


def samples(name: str) -> dict:
    """{(sample name, labels as a sorted tuple): value} of every metric, scraped from agent ``name``."""
    status, kind, body = get(AGENTS[name].http.port, "/metrics")
    assert status == 200 and kind.startswith("text/plain"), (status, kind)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def grew(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_calls_made_and_served_count_by_function_peer_and_outcome(world):
    before = samples("m0")
    for _ in range(3):
        assert torch.equal(call("m0", "m1", torch.add, torch.ones(2), torch.ones(2)), torch.full((2,), 2.0))
    with pytest.raises(ZeroDivisionError):
        call("m0", "m1", divmod, 1, 0)
    after = samples("m0")
    assert grew(before, after, "distautograd_calls_made_total", function="aten::add", peer="m1", outcome="ok") == 3
    assert grew(before, after, "distautograd_calls_made_total", function="builtins.divmod", peer="m1",
                outcome="ZeroDivisionError") == 1
    assert grew(before, after, "distautograd_call_duration_seconds_count", function="aten::add", peer="m1") == 3
    assert grew(before, after, "distautograd_calls_served_total", function="aten::add", peer="m0", outcome="ok") == 3
    assert grew(before, after, "distautograd_calls_served_total", function="builtins.divmod", peer="m0",
                outcome="ZeroDivisionError") == 1
    # the world is one process: every agent counts into the same registry, so bytes went both ways here
    assert grew(before, after, "distautograd_sent_bytes_total", transport="unix") > 0
    assert grew(before, after, "distautograd_received_bytes_total", transport="unix") > 0


def test_backward_passes_count_started_finished_failed_and_their_participants(world):
    before = samples("m0")
    x = torch.randn(3, requires_grad=True)
    with context("m0") as ctx:
        y = call("m0", "m1", torch.exp, x)
        backward("m0", ctx, [y.sum()])
        assert torch.equal(gradients("m0", ctx.id)[x], torch.exp(x.detach()))
    with context("m0") as ctx:
        y = call("m0", "m2", fails_in_backward, x)
        with pytest.raises(RuntimeError, match="Error on Node 2"):
            backward("m0", ctx, [y.sum()])
        assert samples("m0")[("distautograd_open_contexts", ())] >= 1  # this one, at least, is open
    after = samples("m0")
    assert grew(before, after, "distautograd_backward_passes_started_total") == 2
    assert grew(before, after, "distautograd_backward_passes_total", outcome="ok") == 1
    assert grew(before, after, "distautograd_backward_passes_total", outcome="ValueError") == 1
    assert grew(before, after, "distautograd_backward_duration_seconds_count") == 2
    assert 0 < grew(before, after, "distautograd_backward_duration_seconds_sum") < 10  # seconds each took, added
    assert grew(before, after, "distautograd_backward_participants_sum") == 4  # two workers in each
    assert after[("distautograd_members", (("state", "reachable"),))] == 3


def test_a_pass_that_cannot_start_counts_as_started_and_ended_with_its_error(world):
    """Over ACTIVATES_LIMIT send points the root asks the holders; one that forgot its send points
    fails the pass before it starts: counted, with the error's type as its outcome."""
    before = samples("m0")
    xs = [torch.randn(2, requires_grad=True) for _ in range(codec.ACTIVATES_LIMIT + 1)]
    with context("m0") as ctx:
        y = call("m0", "m1", chain_sum_then_exp_on, xs, "m1", "m2")
        AGENTS["m1"].contexts.release(ctx.id)
        with pytest.raises(errors.FailedPrecondition):
            backward("m0", ctx, [y.sum()])
    after = samples("m0")
    assert grew(before, after, "distautograd_backward_passes_started_total") == 1
    assert grew(before, after, "distautograd_backward_passes_total", outcome="FailedPrecondition") == 1


def test_the_coordinator_serves_its_status_as_json_and_a_page(world):
    port = AGENTS["m0"].http.port  # m0 hosts the coordinator
    status, kind, body = get(port, "/status.json")
    assert status == 200 and kind == "application/json"
    data = json.loads(body)
    assert [(w["name"], w["state"]) for w in data["workers"]] == [(n, "alive") for n in NAMES]
    assert all(w["transport"].startswith("unix, tcp") and w["heartbeat_age"] < 5 for w in data["workers"])
    assert data["graphs"] is True and data["events"] == []  # joins are not news; deaths and rejoins are
    status, kind, body = get(port, "/")
    assert status == 200 and kind.startswith("text/html") and b"status.json" in body
    assert get(AGENTS["m1"].http.port, "/status.json")[0] == 404  # only the coordinator has a status


def test_a_path_that_is_not_there_says_what_is():
    server = HttpServer("127.0.0.1", 0, Security())
    try:
        status, _, body = get(server.port, "/nothing")
        assert status == 404 and b"/metrics" in body
    finally:
        server.close()


def test_beyond_loopback_the_port_needs_the_token_and_will_not_start_without_one_or_beside_tls():
    with pytest.raises(errors.InvalidArgument, match="beyond loopback, without a token"):
        HttpServer("0.0.0.0", 0, Security())
    with pytest.raises(errors.InvalidArgument, match="in the clear"):
        HttpServer("0.0.0.0", 0, Security(token="s3cret", tls_cert="cert.pem", tls_key="key.pem"))
    server = HttpServer("0.0.0.0", 0, Security(token="s3cret"))
    try:
        assert get(server.port, "/metrics")[0] == 401
        assert get(server.port, "/metrics", token="wrong")[0] == 401
        status, _, body = get(server.port, "/metrics", token="s3cret")
        assert status == 200 and b"distautograd_calls_made_total" in body
        assert get(server.port, "/metrics", authorization="Basic " + base64.b64encode(b"me:s3cret").decode())[0] == 200
        assert get(server.port, "/metrics", authorization="Basic " + base64.b64encode(b"me:wrong").decode())[0] == 401
        assert get(server.port, "/metrics", authorization="Basic !!!")[0] == 401
    finally:
        server.close()



def test_on_loopback_a_configured_token_is_required_and_a_foreign_host_name_is_refused():
    server = HttpServer("127.0.0.1", 0, Security(token="s3cret"))
    try:
        assert get(server.port, "/metrics")[0] == 401
        assert get(server.port, "/metrics", token="s3cret")[0] == 200
    finally:
        server.close()
    server = HttpServer("127.0.0.1", 0, Security())  # the embedded default: no token configured
    try:
        assert get(server.port, "/metrics")[0] == 200
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:  # a page whose name was rebound to 127.0.0.1
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403
    finally:
        server.close()


def test_a_function_label_is_a_name_never_a_value_and_there_are_boundedly_many(monkeypatch):
    import functools

    from distautograd import metrics

    secret = torch.tensor([12345.678])
    label = metrics.function_label(functools.partial(torch.add, other=secret))
    assert label == "aten::add" and "12345" not in label

    class Callable:
        def __call__(self, x):
            return x

    assert metrics.function_label(Callable()).endswith("test_a_function_label_is_a_name_never_a_value_and_there_are_"
                                                        "boundedly_many.<locals>.Callable")
    monkeypatch.setattr(metrics, "_functions", set())
    monkeypatch.setattr(metrics, "MAX_FUNCTIONS", 2)
    assert [metrics.function_label(f) for f in (divmod, abs, pow, divmod)] == [
        "builtins.divmod", "builtins.abs", "(other)", "builtins.divmod"]


def test_closing_one_port_leaves_counting_on_while_another_serves(world):
    server = HttpServer("127.0.0.1", 0, Security())
    server.close()
    before = samples("m0")
    call("m0", "m1", torch.add, torch.ones(1), torch.ones(1))
    assert grew(before, samples("m0"), "distautograd_calls_made_total", function="aten::add", peer="m1",
                outcome="ok") == 1
