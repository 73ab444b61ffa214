"""A full Redis (noeviction, used memory at maxmemory) must not stop invalidation.

Redis refuses every command that may grow memory once it is full, but still runs deletions,
PUBLISH, and scripts flagged `allow-oom`. Invalidation is what frees memory, so it has to keep
working: entries deleted from Redis and from every API instance's L1, flushes applied, and
the invalidator never dies or restarts its term over a refused command. Fills may be refused
(the cache stops filling), reads are still answered (from Postgres). Each test fills a
private redis-server until it really refuses writes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from redis.exceptions import OutOfMemoryError

from api.keys import category_summary_entry, product_entry
from db.seed import Counts
from invalidator.app import Invalidator
from invalidator.settings import Settings
from pgbust.keys import Keyspace
from pgbust.protocol import Hit, Invalidation, Lease, Refused, Targets, decode_message
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import connect
from tests.support.demo import demo_tags, fill
from tests.support.heartbeat import HeartbeatPlayer
from tests.support.memory import fill_until_full, is_full, limit_memory, used_memory
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import RedisServer, wait_until
from worker import jobs

PRODUCT = product_entry(3)
SUMMARY = category_summary_entry(3)


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop(keep_snapshot=False)


@pytest.fixture
def control(full_redis: RedisServer) -> Iterator[redis.Redis]:
    client = full_redis.client()
    yield client
    client.close()


@pytest.fixture(params=[False, True], ids=["redis-py", "pipelined"])
async def cache(
    full_redis: RedisServer, keyspace: Keyspace, request: pytest.FixtureRequest
) -> AsyncIterator[RedisCache]:
    client = connect(full_redis.url, keyspace, "api")
    # the tests are the invalidator: they beat, so that reads are served (capture live)
    player = HeartbeatPlayer(full_redis.url, keyspace).start()
    cache = RedisCache(client, keyspace, pipelined=request.param)
    # pipelined, the read path's scripts go over a connection of their own: open the client's
    # pool too (as an API's epoch check does every second), since the tests measure memory
    # and make the server a replica, which refuses the identity check of a new connection
    await client.ping()
    yield cache
    cache.close()
    player.stop()
    await client.aclose()


def make_full(control: redis.Redis) -> None:
    limit_memory(control, "noeviction", 1 << 20)
    fill_until_full(control)
    assert is_full(control), "precondition: Redis refuses writes"


# --- the protocol ----------------------------------------------------------------------------


async def test_invalidations_flushes_and_restart_checks_run_while_redis_is_full(
    cache: RedisCache, keyspace: Keyspace, control: redis.Redis
) -> None:
    await fill(cache, PRODUCT, b'{"version":1}')
    await fill(cache, SUMMARY, b'{"count":1}')
    other, flushed = category_summary_entry(4), product_entry(7)
    await fill(cache, other, b'{"count":4}')
    await fill(cache, flushed, b'{"version":1}')
    make_full(control)
    pubsub = cache.client.pubsub()
    await pubsub.subscribe(keyspace.channel)
    await pubsub.get_message(timeout=1)

    # a tag alone: the generation bump is the script's first write
    targets = Targets(tags=frozenset({"category:4:summary"}))
    await cache.invalidate(targets, Invalidation.of(targets, origin="test"))
    assert await cache.peek(other, tags=demo_tags(other)) is None
    # entries and tags
    targets = Targets(frozenset({PRODUCT}), frozenset({"category:3:summary"}))
    result = await cache.invalidate(targets, Invalidation.of(targets, origin="test"))
    assert result.receivers == 1
    assert not control.exists(keyspace.value(PRODUCT))
    assert await cache.peek(SUMMARY, tags=demo_tags(SUMMARY)) is None
    # a flush, and the restart check on a new connection to a server it has not seen
    before = await cache.current_epoch()
    assert await cache.bump_epoch("test", origin="test") > before
    control.delete(keyspace.server_identity)  # as after a restart (DEL runs when full)
    assert await cache.ensure_server_identity("test") is not None
    messages: list[Invalidation] = []
    deadline = asyncio.get_running_loop().time() + 10
    while len(messages) < 4 and asyncio.get_running_loop().time() < deadline:
        message = await pubsub.get_message(timeout=0.5)
        decoded = decode_message(message["data"]) if message is not None else None
        if isinstance(decoded, Invalidation):  # the test's heartbeats ride the channel too
            messages.append(decoded)
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert [(m.flush, bool(m.keys), bool(m.tags)) for m in messages] == [
        (False, False, True),
        (False, True, True),
        (True, False, False),
        (True, False, False),
    ]
    # the workers' reclaiming runs too: deletions are what frees the memory
    assert control.exists(keyspace.value(flushed))
    assert (await jobs.purge_dead(cache, chunk=100)).unlinked == 1
    assert not control.exists(keyspace.value(flushed))


async def test_reads_of_a_full_redis_serve_hits_and_store_nothing(
    cache: RedisCache, keyspace: Keyspace, control: redis.Redis
) -> None:
    await fill(cache, PRODUCT, b'{"version":1}')
    pending = await cache.get_or_lease(
        SUMMARY, tags=demo_tags(SUMMARY)
    )  # a reader that is loading when Redis fills
    assert isinstance(pending, Lease)
    make_full(control)
    used = used_memory(control)

    assert await cache.get_or_lease(PRODUCT, tags=demo_tags(PRODUCT)) == Hit(
        b'{"version":1}'
    )  # hits still served
    refused = await cache.get_or_lease(
        product_entry(4), tags=demo_tags(product_entry(4))
    )  # a miss gets no lease: no write
    assert isinstance(refused, Refused) and refused.reason.startswith("OOM"), refused
    with pytest.raises(OutOfMemoryError):  # a fill would grow memory: refused
        await cache.fill(
            SUMMARY,
            pending.token,
            pending.stamp,
            b'{"count":1}' * 100,
            rows=(),
            since=pending.since,
            tags=demo_tags(SUMMARY),
        )
    assert await cache.release_lease(SUMMARY, pending.token)  # giving it back frees memory
    assert await cache.peek(SUMMARY, tags=demo_tags(SUMMARY)) is None
    assert used_memory(control) <= used + 4096


async def test_a_redis_refusing_every_write_never_ends_the_term_and_takes_the_flush_after(
    full_redis: RedisServer,
    cache: RedisCache,
    control: redis.Redis,
    database_url: str,
    namespace: str,
    pg: psycopg.Connection[Any],
    seeded: Counts,
) -> None:
    """Stricter than full: a read-only replica (of nothing) refuses even allow-oom scripts.
    The batch must stay pending (as a flush) and be retried, in the same term, until Redis
    writes again."""
    settings = Settings(
        database_url=database_url,
        redis_url=full_redis.url,
        namespace=namespace,
        lock_id=random.randint(1, 2**40),
        metrics_port=0,
        redis_retry_max_s=0.05,
    )
    daemon = Invalidator(settings, serve_http=False)
    task = asyncio.create_task(daemon.run())

    def counted(name: str, **labels: str) -> float:
        return daemon.metrics.registry.get_sample_value(name, labels or None) or 0.0

    try:
        await asyncio.wait_for(daemon.started.wait(), 10)
        await until(lambda: counted("pgbust_invalidator_batches_total") >= 1)  # start-up flush
        await fill(cache, PRODUCT, b'{"version":1}')
        await fill(cache, SUMMARY, b'{"count":1}')
        control.execute_command("REPLICAOF", "127.0.0.1", "1")  # type: ignore[no-untyped-call]
        try:
            pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 3")
            await until(lambda: "ReadOnlyError" in daemon.sink.redis_error)
            errors = "pgbust_invalidator_errors_total"
            await until(lambda: counted(errors, kind="redis_refused") >= 3)  # retried, not dropped
            assert (daemon.role, daemon.terms) == ("active", 1)
            assert (
                await cache.peek(PRODUCT, tags=demo_tags(PRODUCT)) == b'{"version":1}'
            )  # precondition: not applied
        finally:
            control.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
        await until(lambda: daemon.sink.redis_ok)
        assert await cache.peek(PRODUCT, tags=demo_tags(PRODUCT)) is None
        assert (
            await cache.peek(SUMMARY, tags=demo_tags(SUMMARY)) is None
        )  # widened to a flush: everything is dead
        assert (daemon.role, daemon.terms, daemon.sink.pending_events) == ("active", 1, 0)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)


async def until(condition: Any, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- real processes: two API instances, the invalidator, psql ----------------------------------


@pytest.fixture
def manager(
    full_redis: RedisServer, stack_env: dict[str, str], tmp_path: Path, seeded: Counts
) -> Iterator[ProcessManager]:
    (tmp_path / "logs").mkdir()
    manager = ProcessManager({**stack_env, "REDIS_URL": full_redis.url}, tmp_path / "logs")
    yield manager
    manager.stop_all()


def metric(proc: ManagedProcess, name: str, labels: str = "") -> float:
    text = httpx.get(proc.base_url + "/metrics", timeout=5).text
    wanted = f"{name}{{{labels}}} " if labels else f"{name} "
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted)
    )


def flushes(api: ManagedProcess) -> float:
    return metric(api, "pgbust_api_invalidation_messages_total", 'kind="flush"')


def version_served(api: ManagedProcess, product_id: int) -> int:
    response = httpx.get(f"{api.base_url}/products/{product_id}", timeout=5)
    assert response.status_code == 200, response.text  # readers always get an answer
    return int(response.json()["version"])


def update_out_of_band(pg: psycopg.Connection[Any], product_id: int) -> int:
    row = pg.execute(
        "UPDATE products SET stock = stock + 1 WHERE id = %s RETURNING version", (product_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def listener_pids(pg: psycopg.Connection[Any]) -> list[int]:
    rows = pg.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbust-invalidator-listener'"
        " AND datname = current_database()"
    ).fetchall()
    return [int(r[0]) for r in rows]


def health(proc: ManagedProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(proc.base_url + "/healthz", timeout=5).json()
    return body


def test_full_redis_still_invalidates_psql_updates_everywhere_without_restarting_a_term(
    manager: ProcessManager, control: redis.Redis, keyspace: Keyspace, pg: psycopg.Connection[Any]
) -> None:
    apis = [manager.api("api-a"), manager.api("api-b")]
    active = manager.invalidator("invalidator-a")
    assert wait_until(lambda: all(flushes(api) >= 1 for api in apis), timeout=15)
    for api in apis + apis:
        for product_id in (3, 4, 5):
            version_served(api, product_id)  # cached in L2 and in both L1s
    make_full(control)

    # an out-of-band UPDATE: gone from Redis and from both L1s
    version = update_out_of_band(pg, 3)
    assert wait_until(lambda: all(version_served(api, 3) == version for api in apis), 10)
    assert not control.exists(keyspace.value(PRODUCT))

    # a flush (the listener's connection is cut: it may have missed notifications)
    seen = [flushes(api) for api in apis]
    for pid in listener_pids(pg):
        pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert wait_until(lambda: all(flushes(a) > s for a, s in zip(apis, seen, strict=True)), 10), (
        "the flush never reached the API instances:\n" + active.log_tail()
    )
    version = update_out_of_band(pg, 4)
    assert wait_until(lambda: all(version_served(api, 4) == version for api in apis), 10)
    assert health(active)["terms"] == 1, active.log_tail()

    # a standby that takes over while Redis is full starts its term with a flush, too
    standby = manager.invalidator("invalidator-b")
    seen = [flushes(api) for api in apis]
    active.kill()
    assert wait_until(lambda: health(standby)["role"] == "active", timeout=15)
    assert wait_until(lambda: all(flushes(a) > s for a, s in zip(apis, seen, strict=True)), 10)
    version = update_out_of_band(pg, 5)
    assert wait_until(lambda: all(version_served(api, 5) == version for api in apis), 10)
    body = health(standby)
    assert (body["terms"], body["redis_ok"]) == (1, True), standby.log_tail()
    assert is_full(control), "Redis stayed full all along"
