"""A setting given on a command line reaches every part of that process, real processes.

The environment points at one deployment, the flag at another: whatever the process builds
(the cache client, the Celery task sender and its broker, the queue, uvicorn's workers) must
follow the flag, never fall back to the environment. The environment's servers are real too,
so a task that leaked to them would be found there.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest

from pgbust.devservers import free_port
from pgbust.keys import Keyspace
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import RedisServer, wait_until

# what a TRUNCATE or a 1,000+ row statement sends: an epoch bump, then a purge task
TABLE_WIDE = '{"v":2,"t":"public.products","op":"T","ts":%d,"all":true}'


@pytest.fixture
def flagged_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """The Redis a command-line flag names (the environment names the session's Redis)."""
    server = RedisServer(tmp_path / "flagged-redis")
    server.start()
    yield server
    server.stop(keep_snapshot=False)


def _tasks_on(server: RedisServer, db: int, queue: str) -> list[str]:
    """Names of the Celery tasks waiting on a Redis broker's queue (kombu: a list per queue)."""
    client = server.client(db)
    try:
        return [orjson.loads(raw)["headers"]["task"] for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()


def _table_wide_change(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_notify('pgbust_changes', %s)", (TABLE_WIDE % (time.time() * 1e6),))


def _active(proc: ManagedProcess) -> bool:
    try:
        return bool(httpx.get(proc.base_url + "/healthz", timeout=0.5).json()["role"] == "active")
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    ("explicit_broker", "broker_db"),
    [(False, 1), (True, 3)],
    ids=["broker-derived-from-the-flag", "explicit-broker-flag"],
)
def test_invalidator_sends_its_worker_tasks_to_the_broker_of_its_flags_not_the_environments(
    procs: ProcessManager,
    stack_env: dict[str, str],
    redis_server: RedisServer,
    flagged_redis: RedisServer,
    database_url: str,
    namespace: str,
    explicit_broker: bool,
    broker_db: int,
) -> None:
    queue = f"{namespace}.worker"
    env_broker_db = 1
    environment = {"CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/{env_broker_db}"}
    flags = ["--redis-url", flagged_redis.url]
    if explicit_broker:
        flags += ["--celery-broker-url", f"redis://127.0.0.1:{flagged_redis.port}/{broker_db}"]
    else:
        environment = {"CELERY_BROKER_URL": ""}  # derived from REDIS_URL: the flag's, db 1
    port = free_port()
    proc = procs.spawn(
        "invalidator-flagged",
        ["invalidator", "--metrics-port", str(port), *flags],
        env=environment,
        port=port,
    ).wait_http_ok("/healthz")
    assert wait_until(lambda: _active(proc), timeout=10), proc.log_tail()

    _table_wide_change(database_url)

    assert wait_until(lambda: "pgbust.purge_dead" in _tasks_on(flagged_redis, broker_db, queue)), (
        f"no purge task on the flag's broker (db {broker_db}); environment's broker has "
        f"{_tasks_on(redis_server, env_broker_db, queue)}\n{proc.log_tail()}"
    )
    # the cache itself is the flag's Redis too: its epoch was bumped there, not in the other
    keyspace = Keyspace(namespace)
    assert flagged_redis.client().get(keyspace.epoch) is not None
    assert redis_server.client().get(keyspace.epoch) is None
    assert _tasks_on(redis_server, env_broker_db, queue) == []
    assert stack_env["REDIS_URL"] == redis_server.url  # the environment did point elsewhere


def test_api_workers_flag_reaches_every_uvicorn_worker_process(
    procs: ProcessManager, seeded: object
) -> None:
    """--workers 2 with an environment whose PGBUST_WORKERS is invalid: the flag wins in the
    command, so it must win in the worker processes uvicorn starts as well."""
    port = free_port()
    proc = procs.spawn(
        "api-workers",
        ["api", "--port", str(port), "--workers", "2"],
        env={"PGBUST_WORKERS": "0"},
        port=port,
    )
    proc.wait_http_ok("/healthz", timeout=30)
    statuses = {httpx.get(proc.base_url + "/products/1", timeout=5).status_code for _ in range(50)}
    assert statuses == {200}, proc.log_tail()
    assert "PGBUST_WORKERS" not in proc.log_tail(200)


def test_celery_worker_refuses_queues_that_leave_out_the_pgbust_queue(
    stack_env: dict[str, str], namespace: str
) -> None:
    """`celery -A worker worker -Q other` would wait forever on a queue nobody sends to."""
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "some-other-queue"],
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "PGBUST_QUEUE" in result.stderr and f"{namespace}.worker" in result.stderr
