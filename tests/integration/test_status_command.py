"""`python -m pgbust status` against a real stack: a private Postgres cluster and Redis, two
real invalidator processes, a real API, a real audit. Healthy, then each fault it reports.

The command must never write: one test runs it as a Postgres role and a Redis ACL user that
cannot write anything, and it still sees the whole stack healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import redis.asyncio as aioredis

from db import migrate, seed
from pgbust.devservers import free_port
from pgbust.keys import Keyspace
from tests.conftest import project_env
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import PostgresCluster, RedisServer, wait_until
from worker.stats import save_audit

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
# What the status command may run on Redis: reads, INFO, TIME and the connection's own set-up.
READ_ONLY_COMMANDS = ["-@all", "+@read", "+info", "+time", "+ping", "+pubsub|numsub"]
READ_ONLY_COMMANDS += ["+client|list", "+hello", "+auth", "+subscribe", "+unsubscribe"]


@dataclass
class Stack:
    cluster: PostgresCluster
    redis: RedisServer
    database_url: str
    namespace: str
    env: dict[str, str]
    procs: ProcessManager
    active: ManagedProcess
    standby: ManagedProcess
    api: ManagedProcess

    @property
    def keyspace(self) -> Keyspace:
        return Keyspace(self.namespace)

    def status(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, "-m", "pgbust", "status", "--json", *args],
            env={**self.env, **(env or {})},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, json.loads(done.stdout)

    def findings(self, *args: str, env: dict[str, str] | None = None) -> set[str]:
        return {f["what"] for f in self.status(*args, env=env)[1]["findings"]}


def _role(proc: ManagedProcess) -> str | None:
    try:
        return str(httpx.get(proc.base_url + "/healthz", timeout=0.5).json()["role"])
    except httpx.HTTPError:
        return None


def _create_database(cluster: PostgresCluster, name: str) -> str:
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:{cluster.port}/{name}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # not under pytest's basetemp: other sessions of the same user may clean that up meanwhile
    folder = Path(tempfile.mkdtemp(prefix="pgbust-status-pg-"))
    cluster = PostgresCluster(folder / "pg")
    server = RedisServer(tmp_path_factory.mktemp("status-redis"))
    procs: ProcessManager | None = None
    try:
        cluster.init()
        cluster.configure(wal_level="logical")
        cluster.start()
        server.start()
        # the recommended policy, so that a healthy stack has nothing to report
        server.client().config_set("maxmemory", 256 * 1024 * 1024)
        server.client().config_set("maxmemory-policy", "allkeys-lru")
        url = _create_database(cluster, "pgbust")
        migrate.upgrade(url)
        seed.seed(url, products=50, categories=5, replace=True)
        namespace = f"s{uuid.uuid4().hex[:8]}"
        env = project_env(url, server, namespace)
        procs = ProcessManager(env, tmp_path_factory.mktemp("status-logs"))
        active = procs.invalidator("inv-active")
        assert wait_until(lambda: _role(active) == "active", timeout=10)
        standby = procs.invalidator("inv-standby")
        assert wait_until(lambda: _role(standby) == "standby", timeout=10)
        api = procs.api("api")
        audit = subprocess.run(
            [sys.executable, "-m", "worker", "audit", "--sample", "10"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert audit.returncode == 0, audit.stderr
        yield Stack(cluster, server, url, namespace, env, procs, active, standby, api)
    finally:
        if procs is not None:
            procs.stop_all()
        server.stop(keep_snapshot=False)
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


def test_a_healthy_namespace_is_reported_healthy_with_exit_0(stack: Stack) -> None:
    # the API subscribes and hears a heartbeat shortly after it answers /healthz
    assert wait_until(lambda: stack.status()[0] == 0, timeout=10), stack.status()[1]["findings"]
    code, report = stack.status()
    assert code == 0 and report["healthy"] and report["findings"] == []
    inv = report["invalidators"]
    assert inv["active_pid"] and inv["listener_connected"] and inv["beat_age_s"] < 2
    assert len(inv["standbys"]) == 1
    assert inv["alive_sender"] and inv["alive_ttl_ms"] > 0
    # the lag from a heartbeat heard on the channel: a quiet stack is fully applied
    assert inv["beat_every_ms"] == 500 and 0 <= inv["proof_age_ms"] < 1000
    tables = {t["relation"]: t["captured"] for t in report["tables"]}
    assert tables == {"public.products": True, "public.categories": True}
    assert report["redis"]["policy"] == "allkeys-lru"
    assert report["redis"]["verdict"] == "recommended"
    assert report["redis"]["subscribers"] == 1
    assert report["redis"]["epoch"] > 0  # the active invalidator bumped it when it took over
    assert report["audit"]["checked"] >= 0 and report["audit"]["stale"] == 0
    assert report["errors"] == []


def test_the_screen_for_a_person_says_ok_and_shows_every_part(stack: Stack) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pgbust", "status"],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout
    screen = done.stdout
    assert f"pgbust namespace {stack.namespace} (capture: notify): OK" in screen
    for part in ("invalidator: active", "standby: 1", "lag: everything committed",
                 "public.products: captured",
                 "maxmemory-policy allkeys-lru", "epoch:", "subscribed API workers: 1",
                 "last audit:"):  # fmt: skip
        assert part in screen, f"{part!r} missing from:\n{screen}"
    assert len(screen.splitlines()) <= 25  # one screen


def test_it_never_writes_run_as_a_role_and_redis_user_that_cannot(stack: Stack) -> None:
    with psycopg.connect(stack.cluster.admin_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pgbust_reader")
        conn.execute("CREATE ROLE pgbust_reader LOGIN IN ROLE pg_read_all_data, pg_monitor")
    admin = stack.redis.client()
    admin.acl_setuser(
        "pgbust_reader",
        enabled=True,
        passwords=["+reader-secret"],
        keys=["*"],
        channels=["*"],
        commands=READ_ONLY_COMMANDS,
    )
    reader_redis = f"redis://pgbust_reader:reader-secret@127.0.0.1:{stack.redis.port}/0"
    # the restrictions are real: this user cannot write
    with redis.Redis.from_url(reader_redis) as client, pytest.raises(redis.ResponseError):
        client.set(f"{stack.namespace}:x", "1")
    reader_pg = stack.database_url.replace("postgres@", "pgbust_reader@")
    code, report = stack.status(env={"DATABASE_URL": reader_pg, "REDIS_URL": reader_redis})
    assert report["errors"] == []
    assert code == 0, report["findings"]
    assert report["invalidators"]["active_pid"] and report["redis"]["subscribers"] == 1


def test_an_api_worker_missing_from_the_channel_is_reported(stack: Stack) -> None:
    assert "api_unsubscribed" not in stack.findings()
    code, report = stack.status("--expect-subscribers", "2")
    assert code == 1
    (finding,) = [f for f in report["findings"] if f["what"] == "api_unsubscribed"]
    assert finding["message"].startswith("1 API workers subscribed")


def test_an_unsafe_maxmemory_policy_is_reported(stack: Stack) -> None:
    client = stack.redis.client()
    client.config_set("maxmemory-policy", "noeviction")
    try:
        code, report = stack.status()
        assert code == 1
        assert [f["what"] for f in report["findings"]] == ["redis_policy"]
        assert "noeviction" in report["findings"][0]["message"]
        client.config_set("maxmemory", 0)
        assert "unbounded" in json.dumps(stack.status()[1]["findings"])
    finally:
        client.config_set("maxmemory", 256 * 1024 * 1024)
        client.config_set("maxmemory-policy", "allkeys-lru")
    assert stack.status()[0] == 0


def test_a_table_whose_capture_trigger_is_disabled_is_reported(stack: Stack) -> None:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE products DISABLE TRIGGER pgbust_capture_update")
        try:
            code, report = stack.status()
            assert code == 1
            (finding,) = [f for f in report["findings"] if f["what"] == "table_not_captured"]
            assert "public.products" in finding["message"] and "disabled" in finding["message"]
            assert finding["severity"] == "critical"
        finally:
            conn.execute("ALTER TABLE products ENABLE TRIGGER pgbust_capture_update")
    assert wait_until(lambda: stack.status()[0] == 0, timeout=10)


def test_stale_entries_found_by_the_last_audit_are_reported(stack: Stack) -> None:
    client = aioredis.Redis.from_url(stack.redis.url)
    key = stack.keyspace.worker_audit
    before = stack.redis.client().get(key)
    report = {"sampled": 40, "checked": 40, "stale": 3, "ratio": 0.075, "at": 0.0}

    async def record() -> None:
        report["at"] = float(stack.redis.client().time()[0])
        await save_audit(client, stack.keyspace, report)  # as the audit job records it
        await client.aclose()

    asyncio.run(record())
    try:
        code, status = stack.status()
        assert code == 1
        (finding,) = status["findings"]
        assert finding["what"] == "audit_stale" and "3 stale entries of 40" in finding["message"]
        assert status["audit"]["ratio"] == 0.075
    finally:
        assert before is not None
        stack.redis.client().set(key, before)


def test_wal_capture_without_its_slot_or_with_nobody_streaming_is_reported(
    stack: Stack,
) -> None:
    # another database of the cluster in wal mode: `python -m db upgrade` creates the
    # publication and the slot; no invalidator consumes it
    url = _create_database(stack.cluster, "walmode")
    wal_env = {"DATABASE_URL": url, "PGBUST_CAPTURE": "wal"}
    upgrade = subprocess.run(
        [sys.executable, "-m", "db", "upgrade"],
        env={**stack.env, **wal_env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    consumer: ManagedProcess | None = None
    try:
        code, report = stack.status(env=wal_env)
        assert code == 1
        assert report["slot"]["exists"] and not report["slot"]["active"]
        assert {t["relation"]: t["captured"] for t in report["tables"]} == {
            "public.products": True,
            "public.categories": True,
        }
        assert "slot_inactive" in {f["what"] for f in report["findings"]}
        # a namespace whose slot was never created
        missing = stack.findings(env={**wal_env, "PGBUST_NAMESPACE": "noslot"})
        assert "slot_missing" in missing
        # a real WAL invalidator streams from the slot: active, nothing held back for long
        consumer = stack.procs.invalidator("inv-wal", env=wal_env)
        code, report = stack.status(env=wal_env)
        slot_findings = {"slot_missing", "slot_lost", "slot_inactive", "slot_lag"}
        assert not slot_findings & {f["what"] for f in report["findings"]}, report["findings"]
        assert report["slot"]["active"] and report["slot"]["lag_bytes"] < 1 << 20
        assert report["invalidators"]["active_pid"] and report["invalidators"]["proof_age_ms"] >= 0
    finally:
        if consumer is not None:
            consumer.stop()  # an active slot cannot be dropped
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = current_database()"
            )


def test_a_server_that_cannot_be_reached_is_reported_and_the_other_still_shown(
    stack: Stack,
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    code, report = stack.status(env={"REDIS_URL": closed})
    assert code == 1
    assert report["findings"][0]["what"] == "unreachable"
    assert report["findings"][0]["message"].startswith("redis:")
    assert report["redis"] is None and report["invalidators"]["active_pid"]  # Postgres shown
    bad_pg = f"postgresql://postgres@127.0.0.1:{free_port()}/pgbust"
    code, report = stack.status(env={"DATABASE_URL": bad_pg})
    assert code == 1 and report["errors"][0].startswith("postgres:")
    assert report["redis"]["subscribers"] == 1  # Redis shown


def test_a_stuck_invalidator_then_none_at_all_are_reported(stack: Stack) -> None:
    stack.standby.stop()
    assert wait_until(lambda: "no_standby" in stack.findings(), timeout=10)
    stack.active.signal(signal.SIGSTOP)  # paused: keeps its session and lock, stops beating
    try:
        assert wait_until(
            lambda: "invalidator_silent" in stack.findings("--beat-max-age-s", "1"), timeout=10
        )
        # the liveness key expires: no process proves capture, the caches serve nothing
        assert wait_until(lambda: "capture_not_live" in stack.findings(), timeout=10)
    finally:
        stack.active.signal(signal.SIGCONT)
    stack.active.stop()
    stack.api.stop()

    def nothing_left() -> bool:
        found = stack.findings()
        return {"no_active_invalidator", "no_standby", "api_unsubscribed"} <= found

    assert wait_until(nothing_left, timeout=10)
    code, report = stack.status()
    assert code == 1 and report["invalidators"]["active_pid"] is None
    assert report["findings"][0]["severity"] == "critical"  # the most serious first
