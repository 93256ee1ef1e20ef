"""docker-compose.yml, run the way it runs: each service in its own network namespace, found by name.

There is no container engine here, so each service's ``command`` runs with its ``environment``
inside its own Linux network namespace, with its own address and an /etc/hosts that resolves
every service name, in ``depends_on`` order, waiting for health where the file says so.
"""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distautograd import netns
from distautograd.testing import Process

ROOT = Path(__file__).resolve().parents[2]
REASON = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=f"{REASON}")]


TOKEN = secrets.token_hex(32)  # as the operator sets it: a secret of their own


def interpolate(value: str, variables: dict) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error}."""
    def replace(match):
        name, _, rest = match.group(1).partition(":")
        if name in variables:
            return variables[name]
        if rest.startswith("?"):
            raise KeyError(f"compose would stop here: {rest[1:]}")
        return rest[1:] if rest.startswith("-") else ""

    return re.sub(r"\$\{([^}]+)\}", replace, str(value))


def load_services(profiles=()) -> dict:
    """The services ``docker compose up`` starts, and those of ``profiles`` (``--profile NAME``)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    variables = {"DISTAUTOGRAD_TOKEN": TOKEN}
    services = {}
    for name, spec in compose["services"].items():
        if spec.get("profiles") and not set(spec["profiles"]) & set(profiles):
            continue
        services[name] = {
            "command": list(spec["command"]),
            "environment": {k: interpolate(v, variables) for k, v in (spec.get("environment") or {}).items()},
            "depends_on": spec.get("depends_on") or {},
            "healthcheck": (spec.get("healthcheck") or {}),
        }
    return services


def start_order(services: dict) -> list:
    order, seen = [], set()

    def visit(name):
        if name not in seen:
            seen.add(name)
            for dep in services[name]["depends_on"]:
                visit(dep)
            order.append(name)

    for name in services:
        visit(name)
    return order


def wait_healthy(network, name: str, service: dict, process: Process, env: dict, timeout: float = 90) -> None:
    test = service["healthcheck"]["test"]
    argv = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check = subprocess.run(network.command(name, argv), capture_output=True, text=True, env=env, timeout=30)
        if check.returncode == 0:
            return
        if not process.alive():
            break
        time.sleep(0.3)
    raise TimeoutError(f"{name} never became healthy ({check.stderr.strip()}):\n{process.tail()}")


class ComposeRun:
    """Every service of docker-compose.yml running in its own namespace."""

    def __init__(self, network, services):
        self.network, self.services, self.processes = network, services, {}
        base = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))
        healthy_needed = {d for s in services.values() for d, c in s["depends_on"].items()
                          if (c or {}).get("condition") == "service_healthy"}
        for name in start_order(services):
            service = services[name]
            env = netns.environment(base, service["environment"])
            self.processes[name] = Process(network.command(name, service["command"]), env, name)
            if name in healthy_needed:
                wait_healthy(network, name, service, self.processes[name], env)

    def stop(self):
        for process in self.processes.values():
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.tail(30)}" for name, p in self.processes.items())


@pytest.fixture
def compose():
    services = load_services()
    with netns.Network(list(services)) as network:
        run = None
        try:
            run = ComposeRun(network, services)
            yield run
        finally:
            if run is not None:
                run.stop()


def test_the_trainer_learns_across_the_cluster(compose):
    trainer = compose.processes["trainer"]
    code = trainer.popen.wait(300)
    out = trainer.tail(60)
    assert code == 0, compose.logs()
    assert "learned: final loss below" in out and "ms/step" in out, compose.logs()


def test_killing_worker2_mid_training_fails_the_trainer_naming_it(compose):
    trainer, worker2 = compose.processes["trainer"], compose.processes["worker2"]
    deadline = time.monotonic() + 180
    while "step" not in "".join(trainer.output) and time.monotonic() < deadline:
        assert trainer.alive(), trainer.tail()
        time.sleep(0.05)
    worker2.signal(signal.SIGKILL)
    killed = time.monotonic()
    code = trainer.popen.wait(120)
    elapsed = time.monotonic() - killed
    out = trainer.tail(60)
    assert code != 0, out
    assert "worker2" in out and "training failed" in out, out
    assert elapsed < 30, f"the trainer took {elapsed:.1f} s to notice"


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus (the README's test command installs it)")
def test_the_monitoring_profile_scrapes_every_process_with_the_token(tmp_path):
    """``--profile monitoring``: the prometheus service's command, run with Debian's binary in a
    namespace of its own, its config file, secret and storage where compose mounts them (here: files
    of this test), scrapes every process by service name with the token while the trainer trains."""
    services = load_services(profiles=["monitoring"])
    prometheus = services.pop("prometheus")
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounted = spec["services"]["prometheus"]["volumes"][0].split(":")
    assert mounted[1] == "/etc/prometheus/prometheus.yml" and spec["services"]["prometheus"]["secrets"] == [
        "distautograd_token"] and spec["secrets"]["distautograd_token"] == {"environment": "DISTAUTOGRAD_TOKEN"}
    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    config = (ROOT / mounted[0]).read_text().replace("/run/secrets/distautograd_token", str(secret))
    (tmp_path / "prometheus.yml").write_text(config)
    paths = {"/etc/prometheus/prometheus.yml": str(tmp_path / "prometheus.yml"), "/prometheus": str(tmp_path / "data")}
    argv = [PROMETHEUS] + [re.sub(r"=(/\S+)", lambda m: "=" + paths.get(m.group(1), m.group(1)), a)
                           for a in prometheus["command"][1:]]
    with netns.Network(list(services) + ["prometheus"]) as network:
        run = None
        scraper = Process(network.command("prometheus", argv), dict(os.environ), "prometheus")
        try:
            run = ComposeRun(network, services)
            trainer = run.processes["trainer"]
            assert trainer.popen.wait(300) == 0, run.logs()
            ask = ("import json, sys, urllib.parse, urllib.request\n"
                   "q = urllib.parse.urlencode({'query': sys.argv[1]})\n"
                   "print(json.dumps(json.load(urllib.request.urlopen('http://127.0.0.1:9090/api/v1/query?' + q, "
                   "timeout=10))['data']['result']))")

            def query(promql):
                out = subprocess.run(network.command("prometheus", [sys.executable, "-c", ask, promql]),
                                     capture_output=True, text=True, timeout=30)
                assert out.returncode == 0, out.stderr + scraper.tail()
                return json.loads(out.stdout)

            deadline = time.monotonic() + 30
            while True:  # the workers stay up; the trainer is gone by now but was scraped while it trained
                up = {r["metric"]["instance"]: r["value"][1] for r in query("max_over_time(up[5m])")}
                if all(up.get(f"{name}:9100") == "1" for name in ("coordinator", "worker1", "worker2", "trainer")):
                    break
                assert time.monotonic() < deadline, (up, scraper.tail())
                time.sleep(1)
            served = query('sum(max_over_time(distautograd_calls_served_total{outcome="ok"}[5m]))')
            assert served and float(served[0]["value"][1]) > 30, served  # the trainer's calls, on the workers
        finally:
            if run is not None:
                run.stop()
            scraper.stop()
