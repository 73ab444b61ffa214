"""A Postgres restart under a running invalidator: it comes back by itself, flushing on the way."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis.asyncio as aioredis

from api.keys import product_entry
from db import migrate, seed
from invalidator.app import Invalidator
from invalidator.settings import Settings
from pgbust.keys import Keyspace
from pgbust.protocol import Lease
from pgbust.redis_cache import RedisCache
from tests.support.demo import demo_tags
from tests.support.servers import PostgresCluster, RedisServer


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[PostgresCluster]:
    pg = PostgresCluster(tmp_path / "pg")
    pg.init()
    pg.start()
    migrate.upgrade(pg.admin_url)
    seed.seed(pg.admin_url, products=50, categories=5)
    yield pg
    pg.stop("immediate")


async def _until(check: object, within: float = 15.0) -> bool:
    assert callable(check)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


async def test_postgres_restart_reconnects_bumps_the_epoch_and_serves_again(
    cluster: PostgresCluster, redis_server: RedisServer, keyspace: Keyspace
) -> None:
    settings = Settings(
        database_url=cluster.admin_url,
        redis_url=redis_server.url,
        namespace=keyspace.namespace,
        lock_id=random.randint(1, 2**40),
    )
    inv = Invalidator(settings, serve_http=False)
    task = asyncio.create_task(inv.run())
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    cache = RedisCache(client, keyspace)
    try:
        await asyncio.wait_for(inv.started.wait(), 15)
        assert await _until(lambda: inv.listener.connected)
        epoch = await cache.current_epoch()

        await asyncio.to_thread(cluster.restart)

        assert await _until(lambda: inv.terms >= 2 or inv.listener.connections >= 2)
        assert await _until(lambda: inv.started.is_set() and inv.listener.connected)
        assert await _until(lambda: inv.metrics.registry.get_sample_value(
            "pgbust_invalidator_epoch_bumps_total", {"why": "reconnect"}
        ) is not None)  # fmt: skip
        assert await cache.current_epoch() > epoch

        entry = product_entry(3)
        lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
        assert isinstance(lease, Lease)
        assert (
            await cache.fill(
                entry,
                lease.token,
                lease.stamp,
                b"{}",
                rows=(),
                since=lease.since,
                tags=demo_tags(entry),
            )
            == 1
        )
        with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
            conn.execute("UPDATE products SET stock = stock + 1 WHERE id = 3")
        for _ in range(500):
            if await cache.peek(entry, tags=demo_tags(entry)) is None:
                break
            await asyncio.sleep(0.02)
        assert await cache.peek(entry, tags=demo_tags(entry)) is None
    finally:
        inv.stop()
        await asyncio.wait_for(task, 20)
        await client.aclose()
