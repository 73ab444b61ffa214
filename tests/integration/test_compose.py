"""compose.yaml and the Dockerfile, checked without a Docker engine.

Each service built from this repository must run a real entry point of the project (its
command is executed here with --help), set only environment variables that its component's
settings actually read, and the image must install what pyproject.toml declares.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from pgbust.settings import env_name

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OURS = sorted(name for name, service in SERVICES.items() if "build" in service)
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The settings each service built from this repo reads (the invalidator also sends Celery
# tasks through pgbust.task_sender, which reads the worker's broker settings).
SETTINGS_OF = {
    "migrate": ["db.settings:DbSettings"],
    "api": ["api.settings:Settings"],
    "invalidator": ["invalidator.settings:Settings", "worker.settings:Settings"],
    "worker": ["worker.settings:Settings"],
    "beat": ["worker.settings:Settings"],
    "locust-master": ["loadtest.settings:Settings"],
    "locust-worker": ["loadtest.settings:Settings"],
}


def _settings_class(spec: str) -> type[BaseSettings]:
    module, name = spec.split(":")
    cls: type[BaseSettings] = getattr(importlib.import_module(module), name)
    assert issubclass(cls, BaseSettings)
    return cls


def _env_names(specs: list[str]) -> set[str]:
    names: set[str] = set()
    for spec in specs:
        cls = _settings_class(spec)
        names |= {env_name(cls, field) for field in cls.model_fields}
    return names


def _argvs(service: dict[str, Any]) -> list[list[str]]:
    """The commands a service runs; `sh -c "a && b"` counts as two."""
    command = service["command"]
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in command[2].split("&&")]
    return [list(command)]


def _local(argv: list[str]) -> list[str]:
    """The same command run with this test's interpreter and virtualenv."""
    program, rest = argv[0], argv[1:]
    if program == "python":
        return [sys.executable, *rest]
    return [str(Path(sys.executable).with_name(program)), *rest]


def test_every_service_built_here_is_configured_by_a_known_component() -> None:
    assert set(OURS) == set(SETTINGS_OF)


@pytest.mark.parametrize("name", OURS)
def test_service_command_is_a_real_entry_point(name: str) -> None:
    for argv in _argvs(SERVICES[name]):
        done = subprocess.run(
            [*_local(argv), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{name}: {shlex.join(argv)} --help failed:\n{done.stderr}"


@pytest.mark.parametrize("name", OURS)
def test_service_sets_only_settings_its_component_reads(name: str) -> None:
    known = _env_names(SETTINGS_OF[name])
    unknown = set(SERVICES[name]["environment"]) - known
    assert not unknown, f"{name} sets {sorted(unknown)}, which {SETTINGS_OF[name]} never reads"


def test_contract_settings_are_read_where_compose_sets_them() -> None:
    assert "API_TOKEN" in _env_names(SETTINGS_OF["api"])
    assert "API_TOKEN" in _env_names(SETTINGS_OF["locust-master"])
    assert "CELERY_BROKER_URL" in _env_names(SETTINGS_OF["worker"])


def test_every_dependency_condition_can_be_met() -> None:
    for name, service in SERVICES.items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in SERVICES, f"{name} depends on unknown service {target}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} waits on {target}'s health"
            if rule["condition"] == "service_completed_successfully":
                assert SERVICES[target].get("restart") == "no", f"{target} must be one-shot"


def test_long_running_servers_have_healthchecks() -> None:
    for name in ("postgres", "redis", "api", "gateway", "invalidator"):
        assert SERVICES[name]["healthcheck"]["test"], name


def test_api_runs_two_instances_and_the_invalidator_a_standby() -> None:
    assert SERVICES["api"]["deploy"]["replicas"] >= 2
    assert SERVICES["invalidator"]["deploy"]["replicas"] >= 2


def test_only_the_api_gateway_the_locust_ui_and_the_operator_uis_are_published() -> None:
    published = sorted(name for name, service in SERVICES.items() if service.get("ports"))
    assert published == ["gateway", "grafana", "locust-master", "prometheus"]
    # the operator UIs answer on the host's loopback only
    for name in ("grafana", "prometheus"):
        assert all(port.startswith("127.0.0.1:") for port in SERVICES[name]["ports"]), name


def _mounts(name: str) -> dict[str, str]:
    """container path -> repository path of a service's bind mounts."""
    mounts = {}
    for volume in SERVICES[name]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = source
    return mounts


def _scrape_targets() -> dict[str, set[tuple[str, int]]]:
    """job -> (compose service, port) of every dns_sd target prometheus.yml scrapes."""
    source = ROOT / _mounts("prometheus")["/etc/prometheus"] / "prometheus.yml"
    config = yaml.safe_load(source.read_text())
    jobs: dict[str, set[tuple[str, int]]] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            jobs.setdefault(job["job_name"], set()).update((n, sd["port"]) for n in sd["names"])
    return jobs


def test_prometheus_loads_its_configuration_and_rules_from_the_repository() -> None:
    command = SERVICES["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    folder = ROOT / _mounts("prometheus")["/etc/prometheus"]
    assert (folder / "prometheus.yml").is_file() and (folder / "alerts.yml").is_file()


def test_prometheus_scrapes_every_api_worker_on_its_own_port() -> None:
    env = SERVICES["api"]["environment"]
    first, workers = int(env["PGBUST_API_METRICS_PORT"]), int(env["PGBUST_WORKERS"])
    assert workers >= 2  # the case the per-worker ports exist for
    assert _scrape_targets()["api"] == {("api", first + i) for i in range(workers)}


def test_prometheus_scrapes_the_invalidators_and_workers_where_they_serve_metrics() -> None:
    command = SERVICES["invalidator"]["command"]
    invalidator_port = int(command[command.index("--metrics-port") + 1])
    worker_port = int(SERVICES["worker"]["environment"]["PGBUST_WORKER_METRICS_PORT"])
    targets = _scrape_targets()
    assert targets["invalidator"] == {("invalidator", invalidator_port)}
    assert targets["worker"] == {("worker", worker_port)}


def test_grafana_is_provisioned_from_the_repository() -> None:
    mounts = _mounts("grafana")
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "pgbust.yml").read_text())
    dashboards_path = providers["providers"][0]["options"]["path"]
    assert (ROOT / mounts[dashboards_path] / "pgbust.json").is_file()
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    host_port = source["datasources"][0]["url"].removeprefix("http://")
    assert host_port == "prometheus:9090" and "prometheus" in SERVICES
    assert SERVICES["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    env = SERVICES["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_locust_services_load_a_locustfile_that_exists() -> None:
    for name in ("locust-master", "locust-worker"):
        argv = SERVICES[name]["command"]
        assert (ROOT / argv[argv.index("-f") + 1]).is_file()


def test_image_installs_the_dependencies_declared_in_pyproject() -> None:
    copy_pyproject = DOCKERFILE.index("COPY pyproject.toml constraints.txt")
    install_deps = DOCKERFILE.index("['project']['dependencies']")
    assert copy_pyproject < install_deps < DOCKERFILE.index("COPY pgbust")
    assert "pip install --no-deps ." in DOCKERFILE
    # No package installed by name behind pyproject's back.
    for line in re.findall(r"pip install ([^\n\\&]+)", DOCKERFILE):
        assert set(line.split()) <= {
            "-c",
            "constraints.txt",
            "-r",
            "/tmp/requirements.txt",
            "--no-deps",
            ".",
        }, line


def test_image_contains_every_package_and_runs_as_non_root() -> None:
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        assert f"COPY {package} ./{package}" in DOCKERFILE, package
    users = re.findall(r"^USER (\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}


def test_image_carries_the_declaration_and_every_component_finds_it() -> None:
    # every component refuses to start without it (pgbust.declaration.load)
    assert "COPY pgbust.toml ./" in DOCKERFILE
    workdir = re.findall(r"^WORKDIR (\S+)", DOCKERFILE, flags=re.MULTILINE)[-1]
    assert f"ENV PGBUST_CONFIG={workdir}/pgbust.toml" in DOCKERFILE
    assert (ROOT / "pgbust.toml").is_file()


def test_image_bakes_in_no_credentials_or_server_addresses() -> None:
    assert not re.search(r"DATABASE_URL|REDIS_URL|BROKER_URL|API_TOKEN|PASSWORD", DOCKERFILE)
