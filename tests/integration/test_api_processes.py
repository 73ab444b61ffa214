"""Real API processes (python -m api) with a real invalidator, Postgres and Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import psycopg
import pytest
import redis

from db.seed import Counts
from pgbust.devservers import free_port
from pgbust.keys import Keyspace
from pgbust.protocol import Invalidation
from tests.conftest import API_TOKEN
from tests.support.heartbeat import HeartbeatPlayer
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.proxy import TcpProxy
from tests.support.servers import wait_until

Apis = tuple[ManagedProcess, ManagedProcess]


def metric(proc: ManagedProcess, name: str, labels: str = "") -> float:
    """One sample of a process's /metrics (0 when absent)."""
    text = httpx.get(proc.base_url + "/metrics", timeout=5).text
    wanted = f"{name}{{{labels}}}" if labels else name
    total = 0.0
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def get(proc: ManagedProcess, path: str) -> httpx.Response:
    return httpx.get(proc.base_url + path, timeout=5)


def peek_version(redis_client: redis.Redis, keyspace: Keyspace, entry: str) -> Any:
    """The version stored in L2 for a product entry, or None when absent."""
    raw = redis_client.get(keyspace.value(entry))
    if not isinstance(raw, bytes):
        return None
    return orjson.loads(raw.split(b"|", 1)[1])["version"]


def capture_live(proc: ManagedProcess) -> bool:
    """The instance hears the active invalidator's heartbeats: its L1 serves."""
    body = httpx.get(proc.base_url + "/healthz", timeout=5).json()
    return bool(body["subscriber"]["capture"] == "live")


def caching(*procs: ManagedProcess) -> None:
    assert wait_until(lambda: all(capture_live(p) for p in procs)), [p.log_tail() for p in procs]


@pytest.fixture
def apis(procs: ProcessManager, seeded: Counts) -> Iterator[Apis]:
    yield procs.api("api-a"), procs.api("api-b")


def test_update_via_psql_evicts_l1_on_every_instance_and_redis(
    procs: ProcessManager,
    apis: Apis,
    pg: psycopg.Connection[Any],
    redis_client: redis.Redis,
    keyspace: Keyspace,
) -> None:
    procs.invalidator()
    a, b = apis
    # the invalidator flushes everything when its listener connects (what it may have missed)
    flushed = 'kind="flush"'
    assert wait_until(
        lambda: all(metric(p, "pgbust_api_invalidation_messages_total", flushed) >= 1 for p in apis)
    )
    caching(a, b)  # and its heartbeats arrive: L1 serves
    # (the epoch check, once a second, may flush the start-up bump a second time: read on)
    for proc in (a, b):
        assert wait_until(lambda proc=proc: get(proc, "/products/3").headers["X-Cache"] == "L1")
    assert peek_version(redis_client, keyspace, "product:3") == 1
    pg.execute("UPDATE products SET price_cents = price_cents + 1 WHERE id = 3")
    evicted = 'kind="evict"'
    assert wait_until(
        lambda: all(metric(p, "pgbust_api_invalidation_messages_total", evicted) >= 1 for p in apis)
    )
    assert redis_client.exists(keyspace.value("product:3")) == 0
    for proc in (a, b):
        fresh = get(proc, "/products/3")
        assert fresh.json()["version"] == 2 and fresh.headers["X-Cache"] != "L1"


def test_an_api_process_keeps_its_start_up_heap_out_of_garbage_collections(apis: Apis) -> None:
    """A full collection walking the imports' objects stalled the event loop for 54-80 ms
    under load (pgbust/gc_pauses.py): each process freezes them once started."""
    for proc in apis:
        assert metric(proc, "pgbust_api_gc_frozen_objects") > 10_000, proc.log_tail()
        # the collection made by the freeze itself is timed: the callback went in first
        assert metric(proc, "pgbust_api_gc_pause_seconds_count", 'generation="2"') >= 1


def test_hundred_concurrent_requests_for_a_cold_key_hit_postgres_a_handful_of_times(
    apis: Apis, live_capture: HeartbeatPlayer
) -> None:
    caching(*apis)

    async def herd(path: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            return await asyncio.gather(
                *(client.get(apis[i % 2].base_url + path) for i in range(100))
            )

    before = sum(metric(p, "pgbust_api_db_loads_total") for p in apis)
    for path in ("/products/21", "/categories/1/summary"):
        responses = asyncio.run(herd(path))
        assert {r.status_code for r in responses} == {200}
        assert len({r.content for r in responses}) == 1
    loads = sum(metric(p, "pgbust_api_db_loads_total") for p in apis) - before
    print(f"database loads for 2 cold keys x 100 requests over 2 instances: {loads:.0f}")
    assert loads <= 4, f"{loads} database loads for 2 cold keys x 100 requests"


def test_killed_subscriber_connection_flushes_l1_and_resubscribes(
    apis: Apis, redis_client: redis.Redis, keyspace: Keyspace, live_capture: HeartbeatPlayer
) -> None:
    a, _ = apis
    caching(a)
    get(a, "/products/4")
    assert get(a, "/products/4").headers["X-Cache"] == "L1"
    flushes = metric(a, "pgbust_api_l1_flushes_total")
    killed = redis_client.client_kill_filter(_type="pubsub")
    assert killed >= 2  # both instances' subscriptions
    assert wait_until(
        lambda: httpx.get(a.base_url + "/healthz").json()["subscriber"]["reconnects"] >= 1
    )
    health = httpx.get(a.base_url + "/healthz")
    assert health.status_code == 200 and health.json()["subscriber"]["state"] == "subscribed"
    caching(a)
    assert metric(a, "pgbust_api_subscriber_reconnects_total") >= 1
    assert metric(a, "pgbust_api_l1_flushes_total") > flushes
    assert get(a, "/products/4").headers["X-Cache"] == "L2"  # L1 was flushed
    assert get(a, "/products/4").headers["X-Cache"] == "L1"
    # the new subscription delivers invalidations again
    redis_client.publish(keyspace.channel, Invalidation(keys=("product:4",)).encode())
    assert wait_until(lambda: get(a, "/products/4").headers["X-Cache"] != "L1")


def test_healthz_is_503_while_redis_is_unreachable_and_recovers_with_a_new_epoch(
    procs: ProcessManager, seeded: Counts, tmp_path: Any, keyspace: Keyspace
) -> None:
    from tests.support.servers import RedisServer

    private = RedisServer(tmp_path / "redis")
    private.start()
    player = HeartbeatPlayer(private.url, keyspace).start()  # beats again once Redis is back
    try:
        api = procs.api("api-own-redis", env={"REDIS_URL": private.url})
        caching(api)
        get(api, "/products/5")
        private.stop(keep_snapshot=False)
        assert wait_until(lambda: httpx.get(api.base_url + "/healthz").status_code == 503)
        body = httpx.get(api.base_url + "/healthz").json()
        assert body["redis"].startswith("error") and body["subscriber"]["state"] != "subscribed"
        # reads still work, from Postgres, and never from a possibly stale L1
        response = get(api, "/products/5")
        assert response.status_code == 200 and response.headers["X-Cache"] == "MISS"
        # Redis comes back (empty, a new run id): resubscribed, epoch bumped, healthy again
        private.start()
        assert wait_until(lambda: httpx.get(api.base_url + "/healthz").status_code == 200)
        assert httpx.get(api.base_url + "/healthz").json()["subscriber"]["reconnects"] >= 1
        client = private.client()
        try:
            assert int(client.get(f"{stack_env_ns(api)}:epoch") or 0) > 0
        finally:
            client.close()
        caching(api)
        get(api, "/products/5")
        assert get(api, "/products/5").headers["X-Cache"] == "L1"
    finally:
        player.stop()
        private.stop(keep_snapshot=False)


def stack_env_ns(proc: ManagedProcess) -> str:
    return proc.env["PGBUST_NAMESPACE"]


def test_sigterm_exits_cleanly(procs: ProcessManager, seeded: Counts) -> None:
    single = procs.api("api-single")
    assert single.stop() == 0
    port = free_port()
    multi = procs.spawn("api-multi", ["api", "--port", str(port), "--workers", "2"], port=port)
    assert multi.wait_http_ok().stop() == 0


def test_config_error_is_one_line_and_exit_2(stack_env: dict[str, str]) -> None:
    env = {**stack_env, "PGBUST_CACHE_MODE": "sometimes"}
    done = subprocess.run(
        [sys.executable, "-m", "api", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=os.getcwd(),
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "PGBUST_CACHE_MODE" in done.stderr


def test_a_write_on_one_instance_is_read_on_the_other_right_after_it(
    apis: Apis, live_capture: HeartbeatPlayer
) -> None:
    a, b = apis
    caching(a, b)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    stale = []
    with httpx.Client(timeout=5) as client:
        for i in range(40):
            path = f"/products/{30 + i}"
            client.get(b.base_url + path)
            assert client.get(b.base_url + path).headers["X-Cache"] == "L1"
            patched = client.patch(a.base_url + path, json={"stock": i}, headers=auth).json()
            read = client.get(b.base_url + path).json()
            if read["version"] != patched["version"]:
                stale.append(path)
    assert not stale, f"instance B served a pre-write version right after the write: {stale}"


def test_postgres_outage_is_503_not_500_and_cached_reads_keep_working(
    procs: ProcessManager, seeded: Counts, database_url: str, live_capture: HeartbeatPlayer
) -> None:
    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.port or 5432).start()
    try:
        through_proxy = urlunsplit(
            parts._replace(netloc=f"{parts.username or ''}@127.0.0.1:{proxy.port}")
        )
        api = procs.api("api-pg-proxy", env={"DATABASE_URL": through_proxy})
        caching(api)  # the invalidator's own path to Postgres works (played here)
        get(api, "/products/6")
        assert get(api, "/products/6").headers["X-Cache"] == "L1"
        proxy.block()
        cached = get(api, "/products/6")
        assert cached.status_code == 200 and cached.headers["X-Cache"] == "L1"
        uncached = httpx.get(api.base_url + "/products/66", timeout=15)
        assert uncached.status_code == 503 and "database" in uncached.json()["detail"]
        health = httpx.get(api.base_url + "/healthz", timeout=15)
        assert health.status_code == 503 and health.json()["database"].startswith("error")
        proxy.unblock()
        assert wait_until(
            lambda: httpx.get(api.base_url + "/healthz", timeout=15).status_code == 200, timeout=20
        )
        assert get(api, "/products/66").status_code == 200
    finally:
        proxy.stop()
