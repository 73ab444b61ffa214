"""`python -m invalidator` as a real process: standby takeover, SIGTERM, configuration errors."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import psycopg
import redis.asyncio as aioredis

from api.keys import product_entry
from db.seed import Counts
from invalidator.settings import Settings
from pgbust.keys import Keyspace
from pgbust.protocol import Lease
from pgbust.redis_cache import RedisCache
from tests.support.demo import demo_tags
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import wait_until

Conn = psycopg.Connection[tuple[Any, ...]]


def role(proc: ManagedProcess) -> str | None:
    try:
        body = httpx.get(proc.base_url + "/healthz", timeout=0.5).json()
    except httpx.HTTPError:
        return None
    return str(body["role"])


def live(proc: ManagedProcess) -> bool:
    """Active with its capture proven alive: readers may fill Redis (the liveness key)."""
    try:
        body = httpx.get(proc.base_url + "/healthz", timeout=0.5).json()
    except httpx.HTTPError:
        return False
    return bool(body.get("capture", {}).get("capture_live"))


def metric(proc: ManagedProcess, name: str) -> float:
    text = httpx.get(proc.base_url + "/metrics", timeout=2).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_standby_takes_over_within_2s_after_the_active_one_is_killed(
    seeded: Counts, procs: ProcessManager, pg: Conn, keyspace: Keyspace, redis_client: Any
) -> None:
    active = procs.invalidator("inv-a")
    assert wait_until(lambda: role(active) == "active", timeout=10)
    standby = procs.invalidator("inv-b")
    assert wait_until(lambda: role(standby) == "standby", timeout=5)
    time.sleep(0.5)
    assert role(standby) == "standby", "two actives at once"

    active.kill()  # SIGKILL: no chance to release anything
    killed_at = time.monotonic()
    assert wait_until(lambda: role(standby) == "active", timeout=2.0)
    took = time.monotonic() - killed_at
    assert took < 2.0
    # the new active one listens: a write is seen and applied
    before = metric(standby, "pgbust_invalidator_events_total")
    assert wait_until(lambda: metric(standby, "pgbust_invalidator_batches_total") >= 1)
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 4")
    assert wait_until(lambda: metric(standby, "pgbust_invalidator_events_total") > before)
    assert redis_client.get(keyspace.epoch) is not None  # takeover bumped the epoch


def _fill(redis_url: str, keyspace: Keyspace, entry: str) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            cache = RedisCache(client, keyspace)
            lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
            assert isinstance(lease, Lease)
            assert (
                await cache.fill(
                    entry,
                    lease.token,
                    lease.stamp,
                    b'{"cached":true}',
                    rows=(),
                    since=lease.since,
                    tags=demo_tags(entry),
                )
                == 1
            )
        finally:
            await client.aclose()

    asyncio.run(run())


def _cached(redis_url: str, keyspace: Keyspace, entry: str) -> bool:
    async def run() -> bool:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await RedisCache(client, keyspace).peek(entry, tags=demo_tags(entry)) is not None
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_a_paused_active_one_is_taken_over_and_is_a_working_standby_when_continued(
    seeded: Counts,
    procs: ProcessManager,
    pg: Conn,
    keyspace: Keyspace,
    redis_client: Any,
    stack_env: dict[str, str],
) -> None:
    takeover_after = Settings.model_fields["takeover_after_s"].default  # the default, 3 s
    redis_url = stack_env["REDIS_URL"]
    active = procs.invalidator("inv-a")
    assert wait_until(lambda: live(active), timeout=10)
    standby = procs.invalidator("inv-b")
    assert wait_until(lambda: role(standby) == "standby", timeout=5)
    entry = product_entry(6)
    _fill(redis_url, keyspace, entry)
    epoch = int(redis_client.get(keyspace.epoch))

    active.signal(signal.SIGSTOP)  # keeps its session, its lock and its LISTEN connection
    paused_at = time.monotonic()
    try:
        pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 6")  # out of band
        assert wait_until(lambda: role(standby) == "active", timeout=takeover_after + 1.5)
        took = time.monotonic() - paused_at
        print(f"takeover after SIGSTOP: {took:.2f} s (PGBUST_TAKEOVER_AFTER_S={takeover_after})")
        assert took < takeover_after + 1.0
        # the write made during the pause is invalidated (the takeover bumps the epoch) ...
        assert wait_until(lambda: not _cached(redis_url, keyspace, entry), timeout=2)
        assert int(redis_client.get(keyspace.epoch)) > epoch
        # ... and the new active one listens: a write during the pause is applied by it
        assert wait_until(lambda: live(standby), timeout=2)
        _fill(redis_url, keyspace, entry)
        pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 6")
        assert wait_until(lambda: not _cached(redis_url, keyspace, entry), timeout=2)
    finally:
        active.signal(signal.SIGCONT)

    # the old one notices it lost its lock connection and stands by: never two actives
    assert wait_until(lambda: role(active) == "standby", timeout=5), active.log_tail()
    for _ in range(10):
        assert (role(active), role(standby)) == ("standby", "active")
        time.sleep(0.1)
    assert "silent for" in standby.log_tail(200)
    assert "lost the invalidator lock connection" in active.log_tail(200)

    # and it is a working standby again: pausing the new active one hands the lock back
    standby.signal(signal.SIGSTOP)
    try:
        assert wait_until(lambda: role(active) == "active", timeout=takeover_after + 1.5), (
            active.log_tail()
        )
        assert wait_until(lambda: live(active), timeout=2)
        _fill(redis_url, keyspace, entry)
        pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 6")
        assert wait_until(lambda: not _cached(redis_url, keyspace, entry), timeout=2)
    finally:
        standby.signal(signal.SIGCONT)
    assert wait_until(lambda: role(standby) == "standby", timeout=5), standby.log_tail()


def test_each_namespace_has_its_own_active_invalidator_on_one_database(
    procs: ProcessManager, namespace: str
) -> None:
    first = procs.invalidator("inv-a")
    other = procs.invalidator("inv-other", env={"PGBUST_NAMESPACE": namespace + "-other"})
    same = procs.invalidator("inv-a2")
    assert wait_until(lambda: role(first) == "active" and role(other) == "active", timeout=10)
    assert wait_until(lambda: role(same) == "standby", timeout=5)
    time.sleep(0.5)
    assert (role(first), role(other), role(same)) == ("active", "active", "standby")


def test_an_explicit_lock_id_overrides_the_namespace(procs: ProcessManager, namespace: str) -> None:
    lock = {"PGBUST_INVALIDATOR_LOCK_ID": str(int(time.time_ns()) % 2**62 + 1)}
    first = procs.invalidator("inv-a", env=lock)
    assert wait_until(lambda: role(first) == "active", timeout=10)
    other = procs.invalidator("inv-other", env={**lock, "PGBUST_NAMESPACE": namespace + "-x"})
    assert wait_until(lambda: role(other) == "standby", timeout=5)
    assert role(first) == "active"


def test_sigterm_drains_and_exits_0(seeded: Counts, procs: ProcessManager, pg: Conn) -> None:
    proc = procs.invalidator()
    assert wait_until(lambda: role(proc) == "active", timeout=10)
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 5")
    proc.signal(signal.SIGTERM)
    assert proc.process is not None
    assert proc.process.wait(timeout=10) == 0
    assert "stopped" in proc.log_tail()


def test_standby_exits_0_on_sigterm_too(procs: ProcessManager) -> None:
    active = procs.invalidator("inv-a")
    assert wait_until(lambda: role(active) == "active", timeout=10)
    standby = procs.invalidator("inv-b")
    assert wait_until(lambda: role(standby) == "standby", timeout=5)
    assert standby.stop() == 0
    assert active.stop() == 0


def test_bad_configuration_is_one_line_and_exit_2(stack_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "invalidator"],
        env={**stack_env, "PGBUST_BATCH_MAX": "0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PGBUST_BATCH_MAX" in lines[0]


def test_unreachable_postgres_is_one_line_and_exit_1(stack_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "invalidator"],
        env={**stack_env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "DATABASE_URL" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_metrics_port_in_use_is_one_line_and_exit_1(stack_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "invalidator", "--metrics-port", str(port)],
            env={**stack_env, "PGBUST_INVALIDATOR_METRICS_HOST": "127.0.0.1"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "metrics-port" in lines[0], result.stderr
