"""The invalidator daemon in-process against real Postgres and Redis: exactly the right keys."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from sqlalchemy import create_engine, delete, insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from api.keys import category_summary_entry, product_entry
from db.models import Product
from db.seed import Counts
from invalidator.app import Invalidator
from invalidator.leader import APPLICATION_NAME, Leadership
from invalidator.metrics import Metrics
from invalidator.settings import Settings
from pgbust.keys import Keyspace
from pgbust.protocol import Invalidation, Lease
from pgbust.redis_cache import RedisCache
from tests.support.demo import demo_tags
from tests.support.servers import RedisServer

Conn = psycopg.Connection[tuple[Any, ...]]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> bool:
    """wait_until for async conditions (the daemon runs in this event loop)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.01)
    return await check()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


@pytest.fixture
def settings(database_url: str, redis_server: RedisServer, namespace: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_server.url,
        namespace=namespace,
        lock_id=random.randint(1, 2**40),
        metrics_port=0,
    )


class RecordingSender:
    """Stands in for the Celery task sender: records (method, args) of every task."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: self.calls.append((name, args))

    def args_of(self, method: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == method]


@pytest.fixture
def tasks_sent() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
async def daemon(settings: Settings, tasks_sent: RecordingSender) -> AsyncIterator[Invalidator]:
    inv = Invalidator(settings, serve_http=False, make_sender=lambda: tasks_sent)
    task = asyncio.create_task(inv.run())
    await asyncio.wait_for(inv.started.wait(), 10)
    # live: a probe came back behind the start-up epoch bump, which is applied, and the
    # liveness key lets readers fill
    assert await eventually(lambda: _true(inv.capture_live))
    yield inv
    inv.stop()
    await asyncio.wait_for(task, 15)


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
async def cache(redis_server: RedisServer, keyspace: Keyspace) -> AsyncIterator[RedisCache]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    yield RedisCache(client, keyspace)
    await client.aclose()


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = create_engine(settings.sqlalchemy_url)
    yield eng
    eng.dispose()


async def fill(cache: RedisCache, *entries: str) -> None:
    for entry in entries:
        lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
        assert isinstance(lease, Lease), entry
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


async def cached(cache: RedisCache, entry: str) -> bool:
    return await cache.peek(entry, tags=demo_tags(entry)) is not None


async def gone(cache: RedisCache, *entries: str) -> bool:
    return all([not await cached(cache, e) for e in entries])


# product i lives in category 1 + i % 5
P1, P2, P3 = product_entry(1), product_entry(2), product_entry(3)
C2, C3, C4, C5 = (category_summary_entry(c) for c in (2, 3, 4, 5))
ALL = (P1, P2, P3, C2, C3, C4, C5)


async def assert_exactly_gone(cache: RedisCache, expected_gone: set[str]) -> None:
    assert await eventually(lambda: gone(cache, *expected_gone)), expected_gone
    still = {e for e in ALL if await cached(cache, e)}
    assert still == set(ALL) - expected_gone


async def test_update_through_sqlalchemy_deletes_the_product_and_its_category(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, engine: Engine
) -> None:
    await fill(cache, *ALL)
    with Session(engine) as session:
        session.execute(update(Product).where(Product.id == 1).values(stock=Product.stock + 1))
        session.commit()
    await assert_exactly_gone(cache, {P1, C2})


async def test_insert_and_delete_through_sqlalchemy(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, engine: Engine
) -> None:
    await fill(cache, *ALL)
    with Session(engine) as session:
        session.execute(
            insert(Product).values(id=500, category_id=4, name="n", price_cents=1, stock=1)
        )
        session.commit()
    await assert_exactly_gone(cache, {C4})
    await fill(cache, C4)
    with Session(engine) as session:
        session.execute(delete(Product).where(Product.id == 2))
        session.commit()
    await assert_exactly_gone(cache, {P2, C3})


async def test_raw_sql_insert_update_delete_as_psql_would(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    await fill(cache, *ALL)
    pg.execute("UPDATE products SET price_cents = price_cents + 1 WHERE id = 3")
    await assert_exactly_gone(cache, {P3, C4})
    await fill(cache, P3, C4)
    pg.execute("INSERT INTO products (category_id, name, price_cents, stock) VALUES (5,'x',1,1)")
    await assert_exactly_gone(cache, {C5})
    await fill(cache, C5)
    pg.execute("DELETE FROM products WHERE id = 2")
    await assert_exactly_gone(cache, {P2, C3})


async def test_category_move_invalidates_old_and_new_category(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    await fill(cache, *ALL)
    pg.execute("UPDATE products SET category_id = 5 WHERE id = 1")  # was in category 2
    await assert_exactly_gone(cache, {P1, C2, C5})


async def test_category_rename_invalidates_nothing_cached(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    # pages and summaries show no category column: a rename changes none of them
    await fill(cache, *ALL)
    pg.execute("UPDATE categories SET name = 'renamed' WHERE id = 3")
    # applied in order: once this one's targets are gone, the rename was applied too
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 1")
    await assert_exactly_gone(cache, {P1, C2})


async def test_publishes_one_message_with_trigger_time_and_origin(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    pubsub = cache.client.pubsub()
    await pubsub.subscribe(cache.keyspace.channel)
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    before_us = time.time_ns() // 1000
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id IN (1, 2)")
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert message is not None
    inv = Invalidation.decode(message["data"])
    assert inv.origin == "cdc" and not inv.flush
    assert set(inv.keys) == {P1, P2}
    # in place (stock only): the products, the pages that show them, their summaries
    assert set(inv.tags) == {
        "row:products:1",
        "row:products:2",
        "category:2:summary",
        "category:3:summary",
    }
    assert inv.ts_us is not None and before_us - 1000 <= inv.ts_us <= time.time_ns() // 1000
    assert sample(daemon.metrics, "pgbust_invalidator_lag_seconds_count") >= 1


async def test_truncate_invalidates_everything_with_one_event(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    await fill(cache, *ALL)
    events = sample(daemon.metrics, "pgbust_invalidator_events_total", table="public.products")
    pg.execute("TRUNCATE products")
    assert await eventually(lambda: gone(cache, *ALL))
    assert sample(daemon.metrics, "pgbust_invalidator_epoch_bumps_total", why="table_wide") == 1
    assert sample(daemon.metrics, "pgbust_invalidator_events_total", table="public.products") == (
        events + 1
    )


async def test_100k_row_update_invalidates_the_table_with_a_bounded_number_of_events(
    database_url: str, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    from db import seed

    await asyncio.to_thread(seed.seed, database_url, 100_000, 20, True)
    # the seed's own inserts were one statement each: table-wide events too
    await asyncio.sleep(0.2)
    await fill(cache, *ALL)
    # (other batches may run meanwhile: the capture check flushes once for the seed's
    # TRUNCATE, probes ride the queue; what is counted here is this UPDATE's own event)
    events = sample(daemon.metrics, "pgbust_invalidator_events_total", table="public.products")
    wide = sample(daemon.metrics, "pgbust_invalidator_epoch_bumps_total", why="table_wide")
    await asyncio.to_thread(pg.execute, "UPDATE products SET stock = stock + 1")
    assert await eventually(lambda: gone(cache, *ALL))
    # one event for 100k rows, and it was one table-wide flush
    assert sample(daemon.metrics, "pgbust_invalidator_events_total", table="public.products") == (
        events + 1
    )
    assert sample(daemon.metrics, "pgbust_invalidator_epoch_bumps_total", why="table_wide") == (
        wide + 1
    )
    assert sample(daemon.metrics, "pgbust_invalidator_keys_deleted_total") < 100


async def test_malformed_payload_flushes_and_is_counted(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    await fill(cache, *ALL)
    pg.execute('SELECT pg_notify(\'pgbust_changes\', \'{"v":2,"t":"public.products","r":\')')
    assert await eventually(lambda: gone(cache, *ALL))
    assert sample(daemon.metrics, "pgbust_invalidator_malformed_payloads_total", reason="not_json")
    assert sample(daemon.metrics, "pgbust_invalidator_epoch_bumps_total", why="malformed") == 1


async def test_well_formed_payload_with_an_unkeyable_row_flushes_and_is_counted(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    await fill(cache, *ALL)
    payload = '{"v":2,"t":"public.products","op":"U","ts":1,"c":["id","category_id"],"r":[[3,"4"]]}'
    pg.execute("SELECT pg_notify('pgbust_changes', %s)", (payload,))
    assert await eventually(lambda: gone(cache, *ALL))
    m = daemon.metrics
    name = "pgbust_invalidator_malformed_payloads_total"
    assert sample(m, name, reason="unkeyable_not_text") == 1
    assert sample(m, "pgbust_invalidator_epoch_bumps_total", why="unkeyable_row") == 1


async def test_killed_listener_connection_reconnects_and_bumps_the_epoch(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    await fill(cache, *ALL)
    epoch = await cache.current_epoch()
    killed = pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'pgbust-invalidator-listener'"
        " AND datname = current_database()"
    ).fetchall()
    assert killed
    assert await eventually(
        lambda: _true(
            sample(daemon.metrics, "pgbust_invalidator_epoch_bumps_total", why="reconnect") == 1
        )
    )
    assert sample(daemon.metrics, "pgbust_invalidator_reconnects_total", server="postgres") >= 1
    assert await cache.current_epoch() > epoch
    assert await gone(cache, *ALL)
    # and it serves again on the new connection
    assert await eventually(lambda: _true(daemon.listener.connected))
    await fill(cache, P1, P2)
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 1")
    assert await eventually(lambda: gone(cache, P1))
    assert await cached(cache, P2)


async def test_redis_outage_keeps_pending_changes_and_bumps_the_epoch_when_back(
    database_url: str,
    seeded: Counts,
    namespace: str,
    pg: Conn,
    tmp_path: Any,
    tasks_sent: RecordingSender,
) -> None:
    handed = tasks_sent.args_of  # the retry tasks handed to the workers, as they arrive
    private = RedisServer(tmp_path / "redis")
    private.start()
    settings = Settings(
        database_url=database_url,
        redis_url=private.url,
        namespace=namespace,
        lock_id=random.randint(1, 2**40),
        redis_retry_max_s=0.2,
    )
    inv = Invalidator(settings, serve_http=False, make_sender=lambda: tasks_sent)
    task = asyncio.create_task(inv.run())
    try:
        await asyncio.wait_for(inv.started.wait(), 10)
        m = inv.metrics
        assert await eventually(lambda: _true(sample(m, "pgbust_invalidator_batches_total") >= 1))
        private.stop()
        pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 1")
        assert await eventually(
            lambda: _true(sample(m, "pgbust_invalidator_errors_total", kind="redis") >= 2)
        )
        assert not inv.sink.redis_ok
        assert await eventually(lambda: _true(bool(handed("retry_invalidation"))))
        keys, tags, flush, reason = handed("retry_invalidation")[0]
        assert keys == [P1] and tags == ["category:2:summary", "row:products:1"] and not flush
        assert "redis unreachable" in reason
        pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 2")
        private.start()
        assert await eventually(
            lambda: _true(sample(m, "pgbust_invalidator_epoch_bumps_total", why="redis_back") == 1)
        )
        assert inv.sink.redis_ok
        assert sample(m, "pgbust_invalidator_events_total", table="public.products") == 2
    finally:
        inv.stop()
        await asyncio.wait_for(task, 15)
        private.stop()


async def test_after_a_long_redis_outage_the_catch_up_follows_its_return_within_the_back_off(
    seeded: Counts, database_url: str, namespace: str, pg: Conn, tmp_path: Any
) -> None:
    """The default back-off is short: a commit made after Redis is back (API instances fill
    again at once) must not wait seconds for the invalidator's next attempt."""
    private = RedisServer(tmp_path / "redis")
    private.start()
    settings = Settings(database_url=database_url, redis_url=private.url, namespace=namespace)
    assert settings.redis_retry_max_s <= 0.25
    inv = Invalidator(settings, serve_http=False, make_sender=lambda: tasks_sent)
    task = asyncio.create_task(inv.run())
    try:
        await asyncio.wait_for(inv.started.wait(), 10)
        m = inv.metrics
        assert await eventually(lambda: _true(sample(m, "pgbust_invalidator_batches_total") >= 1))
        await asyncio.to_thread(private.stop)
        pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 1")
        # long enough for the exponential back-off to reach its maximum
        assert await eventually(
            lambda: _true(sample(m, "pgbust_invalidator_errors_total", kind="redis") >= 8)
        )
        await asyncio.to_thread(private.start)
        back = time.monotonic()
        assert await eventually(
            lambda: _true(sample(m, "pgbust_invalidator_epoch_bumps_total", why="redis_back") == 1)
        )
        assert time.monotonic() - back < settings.redis_retry_max_s + 0.5
    finally:
        inv.stop()
        await asyncio.wait_for(task, 15)
        private.stop()


async def test_medium_statement_arrives_in_chunks_and_deletes_every_key_without_flush(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    await fill(cache, *ALL)
    epoch = await cache.current_epoch()
    pg.execute(
        "INSERT INTO products (category_id, name, price_cents, stock)"
        " SELECT 1 + g % 3, 'bulk', 1, 1 FROM generate_series(1, 900) g"
    )
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id <= 3")
    assert await eventually(lambda: gone(cache, P1, P2, P3, C2, C3, C4))
    assert await cached(cache, C5)
    assert await cache.current_epoch() == epoch  # precise, not a flush
    assert sample(daemon.metrics, "pgbust_invalidator_events_total", table="public.products") >= 3


async def test_hot_entries_are_handed_to_the_warm_task(
    seeded: Counts,
    daemon: Invalidator,
    cache: RedisCache,
    pg: Conn,
    tasks_sent: RecordingSender,
) -> None:
    await cache.client.zincrby(cache.keyspace.hot, 5, P1)
    await cache.client.zincrby(cache.keyspace.hot, 5, C3)
    await daemon.hot.refresh()
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 1")
    assert await eventually(lambda: _true(bool(tasks_sent.args_of("warm"))))
    assert tasks_sent.args_of("warm")[0] == ([P1],)  # category 3 was not touched


async def test_lost_lock_connection_stops_serving_then_takes_the_lock_again(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'pgbust-invalidator-lock' AND datname = current_database()"
    )
    assert daemon.terms == 1
    assert await eventually(
        lambda: _true(daemon.terms == 2 and daemon.started.is_set() and daemon.listener.connected)
    )
    assert daemon.role == "active"
    await fill(cache, P1)
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 1")
    assert await eventually(lambda: gone(cache, P1))


async def test_redis_refusing_the_script_widens_to_a_flush_instead_of_retrying(
    seeded: Counts, daemon: Invalidator, cache: RedisCache, pg: Conn
) -> None:
    await fill(cache, *ALL)
    # a member set of the wrong type: the script is refused at category 2 (SPOP: WRONGTYPE)
    members = cache.keyspace.tag_members("category:2:summary")
    await cache.client.delete(members)
    await cache.client.set(members, "not-a-set")
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 1")
    assert await eventually(lambda: gone(cache, *ALL))
    m = daemon.metrics
    assert sample(m, "pgbust_invalidator_errors_total", kind="redis_command") == 1
    assert sample(m, "pgbust_invalidator_epoch_bumps_total", why="redis_error") == 1


async def test_a_silent_lock_holder_is_terminated_but_a_foreign_session_never(
    database_url: str, namespace: str
) -> None:
    lock_id = random.randint(1, 2**40)
    take = "SELECT pg_try_advisory_lock(%s)"
    # an invalidator's lock session that stopped running statements (a paused process)
    silent = await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, application_name=APPLICATION_NAME
    )
    await silent.execute(take, (lock_id,))
    leadership = Leadership(database_url, lock_id, 0.05, namespace=namespace, takeover_after_s=0.5)
    started = time.monotonic()
    await asyncio.wait_for(leadership.acquire(), 5)
    assert time.monotonic() - started >= 0.4
    assert leadership.takeovers == 1
    with pytest.raises(psycopg.OperationalError):
        await silent.execute("SELECT 1")
    await silent.close()
    # the heartbeat names the new holder
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT namespace FROM pgbust.invalidator_heartbeat WHERE lock_id = %s", (lock_id,)
        ).fetchone()
    assert row == (namespace,)
    await leadership.release()

    # a session of something else that happens to hold the same lock id is left alone
    foreign = await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, application_name="someone-else"
    )
    await foreign.execute(take, (lock_id,))
    other = Leadership(database_url, lock_id, 0.05, namespace=namespace, takeover_after_s=0.2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(other.acquire(), 1.0)
    await foreign.execute("SELECT 1")
    assert other.takeovers == 0
    await other.release()
    await foreign.close()
