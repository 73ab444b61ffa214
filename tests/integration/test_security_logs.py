"""Passwords in DATABASE_URL, REDIS_URL and CELERY_BROKER_URL never appear in clear: not in
any process log (start-up, reconnects after dropped connections), not in /healthz or /metrics,
not in a start-up error."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from db import seed
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import RedisServer, wait_until

PASSWORD = "pw-Sekrit-4242"
TOKEN = "security-token-0123456789"


def _with_password(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD}@{host}"))


@pytest.fixture
def secret_env(database_url: str, redis_server: RedisServer) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PGBUST_") and k not in {"API_TOKEN", "CELERY_BROKER_URL"}
    }
    db_user = urlsplit(database_url).username or "postgres"
    # trust authentication ignores the password; the default Redis user (nopass) accepts any
    env.update(
        DATABASE_URL=_with_password(database_url, db_user),
        REDIS_URL=_with_password(redis_server.url, "default"),
        CELERY_BROKER_URL=_with_password(f"redis://127.0.0.1:{redis_server.port}/1", "default"),
        API_TOKEN=TOKEN,
        PGBUST_NAMESPACE=f"sec{uuid.uuid4().hex[:8]}",
        PGBUST_LOG_LEVEL="DEBUG",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def stack(
    secret_env: dict[str, str], tmp_path: Path, database_url: str
) -> Iterator[tuple[ProcessManager, list[ManagedProcess]]]:
    seed.seed(database_url, products=20, categories=2, replace=True)
    manager = ProcessManager(secret_env, tmp_path)
    procs = [manager.invalidator("invalidator"), manager.api("api"), manager.celery_worker()]
    yield manager, procs
    manager.stop_all()


def _drop_connections(database_url: str, redis_server: RedisServer) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    client = redis_server.client()
    try:
        client.client_kill_filter(_type="pubsub")
        client.client_kill_filter(_type="normal", skipme=True)
    finally:
        client.close()


def test_passwords_never_logged_in_clear(
    stack: tuple[ProcessManager, list[ManagedProcess]],
    database_url: str,
    redis_server: RedisServer,
) -> None:
    manager, (invalidator, api, worker) = stack
    assert wait_until(lambda: "ready" in worker.log_path.read_text(errors="replace"), 30)
    with httpx.Client(base_url=api.base_url, timeout=5) as http:
        for product_id in range(1, 6):
            http.get(f"/products/{product_id}")
        http.patch("/products/1", json={"stock": 3}, headers={"Authorization": f"Bearer {TOKEN}"})
    _drop_connections(database_url, redis_server)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE products SET stock = stock + 1 WHERE id = 2")
    assert wait_until(lambda: httpx.get(api.base_url + "/healthz").status_code == 200, 30)
    assert wait_until(lambda: httpx.get(invalidator.base_url + "/healthz").status_code == 200, 30)
    exposed = {
        "api /healthz": httpx.get(api.base_url + "/healthz").text,
        "api /metrics": httpx.get(api.base_url + "/metrics").text,
        "invalidator /healthz": httpx.get(invalidator.base_url + "/healthz").text,
        "invalidator /metrics": httpx.get(invalidator.base_url + "/metrics").text,
    }
    for proc in manager.processes:
        exposed[f"{proc.name} log"] = proc.log_path.read_text(errors="replace")
    leaks = [where for where, text in exposed.items() if PASSWORD in text]
    assert not leaks, f"password in clear in: {leaks}"
    assert sum(len(text) for text in exposed.values()) > 1000  # there was something to read


@pytest.mark.parametrize(
    "command",
    [["-m", "api", "--port", "0"], ["-m", "invalidator"]],
    ids=["api", "invalidator"],
)
@pytest.mark.parametrize("setting", ["DATABASE_URL", "REDIS_URL"])
def test_unreachable_server_error_redacts_the_password(
    secret_env: dict[str, str], command: list[str], setting: str
) -> None:
    env = dict(secret_env)
    scheme = "postgresql" if setting == "DATABASE_URL" else "redis"
    env[setting] = f"{scheme}://someone:{PASSWORD}@127.0.0.1:1/0"
    result = subprocess.run(
        [sys.executable, *command], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
