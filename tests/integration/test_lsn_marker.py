"""The read replicas' LSN marker in the Lua protocol, against a real Redis: raised with the
invalidation it covers, never lowered, returned atomically with a lease (pgbust/lua.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from api.keys import product_entry
from pgbust.keys import Keyspace
from pgbust.protocol import Busy, Invalidation, Lease, Targets
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import connect
from pgbust.replica import UNKNOWN_LSN, parse_lsn
from tests.support.demo import demo_tags
from tests.support.servers import RedisServer
from worker.jobs import retry_invalidation


@pytest.fixture
async def client(redis_server: RedisServer, keyspace: Keyspace) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.set(keyspace.capture_alive, "test")
    yield client
    await client.aclose()


@pytest.fixture
def reader(client: aioredis.Redis, keyspace: Keyspace) -> RedisCache:
    return RedisCache(client, keyspace, lsn_marker=True)


@pytest.fixture
def writer(client: aioredis.Redis, keyspace: Keyspace) -> RedisCache:
    return RedisCache(client, keyspace)


def _product(n: int) -> tuple[Targets, Invalidation]:
    targets = Targets(frozenset({product_entry(n)}))
    return targets, Invalidation.of(targets, origin="test")


async def _lease(reader: RedisCache, n: int) -> Lease:
    entry = product_entry(n)
    lease = await reader.get_or_lease(entry, tags=demo_tags(entry))
    assert isinstance(lease, Lease)
    return lease


async def test_a_lease_without_a_marker_key_carries_none(reader: RedisCache) -> None:
    assert (await _lease(reader, 1)).marker is None


async def test_an_invalidation_raises_the_marker_the_next_lease_returns_it(
    reader: RedisCache, writer: RedisCache, client: aioredis.Redis, keyspace: Keyspace
) -> None:
    lsn = parse_lsn("3/A0")
    await writer.invalidate(*_product(2), lsn=lsn)
    assert await client.get(keyspace.lsn_marker) == b"00000003000000A0"
    assert (await _lease(reader, 2)).marker == lsn


async def test_the_marker_is_never_lowered_and_compares_both_halves(
    writer: RedisCache, client: aioredis.Redis, keyspace: Keyspace
) -> None:
    await writer.raise_lsn(parse_lsn("1/0"))
    await writer.invalidate(*_product(3), lsn=parse_lsn("0/FFFFFFFF"))  # older: kept
    assert await client.get(keyspace.lsn_marker) == b"0000000100000000"
    await writer.bump_epoch("test", origin="test", lsn=parse_lsn("1/1"))
    assert await client.get(keyspace.lsn_marker) == b"0000000100000001"


async def test_an_unknown_lsn_deletes_the_marker_with_the_invalidation(
    writer: RedisCache, reader: RedisCache, client: aioredis.Redis, keyspace: Keyspace
) -> None:
    await writer.raise_lsn(parse_lsn("5/0"))
    await writer.invalidate(*_product(4), lsn=UNKNOWN_LSN)
    assert await client.exists(keyspace.lsn_marker) == 0
    assert (await _lease(reader, 4)).marker is None


async def test_an_invalidation_without_an_lsn_leaves_the_marker_alone(
    writer: RedisCache, client: aioredis.Redis, keyspace: Keyspace
) -> None:
    await writer.raise_lsn(parse_lsn("6/0"))
    await writer.invalidate(*_product(5))
    await writer.bump_epoch("test", origin="test")
    assert await client.get(keyspace.lsn_marker) == b"0000000600000000"


async def test_the_raising_invalidation_still_deletes_the_entry_and_its_lease(
    reader: RedisCache, writer: RedisCache
) -> None:
    entry = product_entry(6)
    first = await _lease(reader, 6)
    assert isinstance(await reader.get_or_lease(entry, tags=demo_tags(entry)), Busy)
    await writer.invalidate(*_product(6), lsn=parse_lsn("7/0"))
    # the lease is gone: the first reader's fill is refused, a new reader leases again
    assert (
        await reader.fill(
            entry, first.token, first.stamp, b"{}", tags=demo_tags(entry), rows=(), since=1
        )
        == 0
    )
    assert (await _lease(reader, 6)).marker == parse_lsn("7/0")


async def test_a_restarted_redis_loses_the_marker_with_the_epoch_bump(
    writer: RedisCache, reader: RedisCache, client: aioredis.Redis, keyspace: Keyspace
) -> None:
    # restored from an old snapshot, the marker would be behind invalidations the restart
    # lost: the check that bumps the epoch for a new server deletes it (readers: the primary)
    await writer.raise_lsn(parse_lsn("8/0"))
    await client.set(keyspace.server_identity, "a server from before the restart")
    assert await writer.ensure_server_identity(origin="test") is not None
    assert await client.exists(keyspace.lsn_marker) == 0
    assert (await _lease(reader, 9)).marker is None
    # the same server again: nothing bumped, nothing deleted
    await writer.raise_lsn(parse_lsn("9/0"))
    assert await writer.ensure_server_identity(origin="test") is None
    assert await client.get(keyspace.lsn_marker) == b"0000000900000000"


async def test_a_new_connection_to_a_new_server_deletes_the_marker_before_it_is_used(
    redis_server: RedisServer, keyspace: Keyspace, client: aioredis.Redis
) -> None:
    await client.set(keyspace.lsn_marker, "000000000A000000")
    await client.set(keyspace.server_identity, "a server from before the restart")
    checked = connect(redis_server.url, keyspace, "test")
    try:
        lease = await RedisCache(checked, keyspace, lsn_marker=True).get_or_lease(
            product_entry(10), tags=demo_tags(product_entry(10))
        )
    finally:
        await checked.aclose()
    assert isinstance(lease, Lease) and lease.marker is None


async def test_a_workers_retried_invalidation_deletes_the_marker_it_cannot_raise(
    writer: RedisCache, client: aioredis.Redis, keyspace: Keyspace
) -> None:
    # the batch it retries was committed long before: it knows no LSN past those commits
    await writer.raise_lsn(parse_lsn("B/0"))
    targets, _ = _product(12)
    await retry_invalidation(writer, targets, "redis was unreachable", enqueued_ms=0)
    assert await client.exists(keyspace.lsn_marker) == 0
