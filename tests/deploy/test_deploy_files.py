"""The Dockerfile, docker-compose.yml and the Kubernetes manifests agree with each other and with the CLI."""

import os
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest
import yaml

from distautograd.cli import build_parser
from distautograd.runtime.options import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def manifests() -> dict:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def container(doc) -> dict:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def check_command(command: list, env: dict) -> None:
    """A `distautograd ...` command must parse with the real CLI under the container's environment
    (values filled in by Kubernetes count as set); a python module must exist."""
    if command[0] == "distautograd":
        values = {k: v if isinstance(v, str) else "set-by-kubernetes" for k, v in env.items()}
        with mock.patch.dict(os.environ, values):
            build_parser().parse_args(command[1:])
    else:
        assert command[:2] == ["python", "-m"], command
        module = command[2]
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module


ROLES = {"coordinator": ("Deployment", "coordinator"), "worker": ("StatefulSet", "worker"), "trainer": ("Job", "trainer")}


def test_every_manifest_parses_and_every_kind_is_there():
    docs = manifests()
    for kind, name in [*ROLES.values(), ("Service", "coordinator"), ("Service", "worker"), ("Secret", "distautograd-token")]:
        assert (kind, name) in docs, f"missing {kind}/{name}"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    # monitoring.yaml needs the Prometheus Operator's CRDs: applied on its own, where they are installed
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", "monitoring.yaml"))


def test_the_service_monitor_scrapes_every_metrics_port_with_the_token():
    docs = manifests()
    monitor = docs[("ServiceMonitor", "distautograd")]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "distautograd-token", "key": "token"}}
    for name in ("coordinator", "worker"):
        service = docs[("Service", name)]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        assert port["port"] == int(env_of(container(docs[ROLES[name]]))["DISTAUTOGRAD_METRICS_PORT"])
    pods = docs[("PodMonitor", "distautograd-trainer")]  # the trainer, a Job without a Service
    (endpoint,) = pods["spec"]["podMetricsEndpoints"]
    assert endpoint["authorization"] == monitor["spec"]["endpoints"][0]["authorization"]
    trainer = docs[ROLES["trainer"]]
    assert pods["spec"]["selector"]["matchLabels"].items() <= trainer["spec"]["template"]["metadata"]["labels"].items()
    (port,) = [p for p in container(trainer)["ports"] if p["name"] == endpoint["port"]]
    assert port["containerPort"] == int(env_of(container(trainer))["DISTAUTOGRAD_METRICS_PORT"])


@pytest.mark.parametrize("role", ROLES)
def test_containers_are_complete_and_use_only_known_settings(role):
    doc = manifests()[ROLES[role]]
    c = container(doc)
    env = env_of(c)
    check_command(c["command"], env)
    unknown = set(env) - set(ENVIRONMENT)
    assert not unknown, f"{role} sets variables nothing reads: {unknown}"
    assert env["DISTAUTOGRAD_TOKEN"] == {"secretKeyRef": {"name": "distautograd-token", "key": "token"}}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert doc["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    port = int(env["DISTAUTOGRAD_PORT"])
    assert [p["containerPort"] for p in c["ports"]] == [port, int(env["DISTAUTOGRAD_METRICS_PORT"])]
    if role != "trainer":
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == port, f"{role} {probe} checks another port"


def test_services_route_to_the_ports_the_processes_listen_on():
    docs = manifests()
    coordinator = container(docs[ROLES["coordinator"]])
    service = docs[("Service", "coordinator")]
    assert service["spec"]["selector"] == docs[ROLES["coordinator"]]["spec"]["template"]["metadata"]["labels"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert port["port"] == int(env_of(coordinator)["DISTAUTOGRAD_PORT"]) and port["targetPort"] == "grpc"
    address = f"{service['metadata']['name']}:{port['port']}"
    for role in ("worker", "trainer"):
        assert env_of(container(docs[ROLES[role]]))["DISTAUTOGRAD_COORDINATOR"] == address

    workers = docs[ROLES["worker"]]
    headless = docs[("Service", "worker")]
    assert headless["spec"]["clusterIP"] == "None" and workers["spec"]["serviceName"] == headless["metadata"]["name"]
    worker_env = env_of(container(workers))
    assert worker_env["DISTAUTOGRAD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert worker_env["DISTAUTOGRAD_ADVERTISE_HOST"] == f"$(DISTAUTOGRAD_NAME).{headless['metadata']['name']}"
    pods = [f"{workers['metadata']['name']}-{i}" for i in range(workers["spec"]["replicas"])]
    assert env_of(container(docs[ROLES["trainer"]]))["DISTAUTOGRAD_WORKERS"] == ",".join(pods)


def test_kubernetes_and_compose_run_the_same_programs_with_the_same_settings():
    docs, services = manifests(), compose()
    pairs = {"coordinator": "coordinator", "worker": "worker1", "trainer": "trainer"}
    for role, service_name in pairs.items():
        c, service = container(docs[ROLES[role]]), services[service_name]
        assert c["command"] == service["command"], role
        assert set(env_of(c)) == set(service["environment"]), f"{role}: {set(env_of(c)) ^ set(service['environment'])}"
        assert c["image"] == service["image"]
        k8s_env = env_of(c)
        for key in ("DISTAUTOGRAD_PORT", "DISTAUTOGRAD_HOST", "DISTAUTOGRAD_COORDINATOR", "DISTAUTOGRAD_ALLOW_MODULES"):
            if key in k8s_env:
                assert str(k8s_env[key]) == str(service["environment"][key]), (role, key)


def test_compose_services_are_complete():
    services = {name: s for name, s in compose().items() if not s.get("profiles")}
    assert set(services) == {"coordinator", "worker1", "worker2", "trainer"}
    monitoring = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = monitoring["scrape_configs"]
    (targets,) = [c["targets"] for c in job["static_configs"]]
    assert sorted(targets) == sorted(f"{n}:{s['environment']['DISTAUTOGRAD_METRICS_PORT']}" for n, s in services.items())
    assert job["authorization"]["credentials_file"] == "/run/secrets/distautograd_token"
    for name, service in services.items():
        env = service["environment"]
        check_command(service["command"], env)
        assert not set(env) - set(ENVIRONMENT), name
        assert env["DISTAUTOGRAD_TOKEN"].startswith("${DISTAUTOGRAD_TOKEN:?"), (
            f"{name} must take the token from the environment, and stop when it is not set")
        if name != "coordinator":
            assert env["DISTAUTOGRAD_COORDINATOR"] == "coordinator:29500"
            assert all(c["condition"] == "service_healthy" for c in service["depends_on"].values())
        if name != "trainer":
            assert service["healthcheck"]["test"] == ["CMD", "distautograd", "health", f"127.0.0.1:{env['DISTAUTOGRAD_PORT']}"]
    assert not (ROOT / ".env").exists(), "no token may ship with the repository: a published token guards nothing"


def test_the_image_runs_as_a_non_root_user_with_a_grpc_healthcheck():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.M)
    assert re.search(r"^\s*CMD distautograd health", dockerfile, re.M)
    assert "torch==2.13.0" in dockerfile
    healthcheck = next(l for l in dockerfile.splitlines() if l.strip().startswith("CMD distautograd health"))
    argv = shlex.split(healthcheck.strip()[4:].replace("${DISTAUTOGRAD_PORT:-29500}", "29500"))
    build_parser().parse_args(argv[1:])


def test_the_image_builds_the_core_in_a_builder_stage_and_ships_no_compiler():
    """(Static: this machine's containers cannot reach Debian's archive for g++, so the image build
    itself is not run here.)"""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    builder, image = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert builder.split()[1:3] == ["AS", "builder"] and "g++" in builder and "pip wheel" in builder
    assert "the compiled core was not built" in builder  # the build fails without it
    assert "COPY --from=builder /wheels /wheels" in image and "pip install /wheels/*.whl" in image
    assert not re.search(r"g\+\+|gcc|build-essential|clang", image)
