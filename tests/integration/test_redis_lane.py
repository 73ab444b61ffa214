"""The pipelined lane of the read path's scripts (pgbust.redis_lane) against a real Redis,
behind a TCP proxy: it answers many concurrent callers in order, survives a SCRIPT FLUSH,
runs the server identity check on its own connection, and fails (never hangs) when the
connection is cut or goes silent, then reconnects. The protocol itself runs over the lane in
every test of test_cache_protocol.py and test_redis_full.py ([pipelined])."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from api.keys import product_entry
from pgbust.keys import Keyspace
from pgbust.protocol import Busy, Hit, Lease
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import connect, identity_check
from tests.support.demo import demo_tags, fill
from tests.support.proxy import TcpProxy
from tests.support.servers import RedisServer

SOCKET_TIMEOUT_S = 0.5


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(redis_server.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
async def lane_cache(
    proxy: TcpProxy, redis_server: RedisServer, keyspace: Keyspace
) -> AsyncIterator[RedisCache]:
    control = aioredis.Redis.from_url(redis_server.url)
    await control.set(keyspace.capture_alive, "test")  # the test is the invalidator
    await control.aclose()
    client = connect(
        f"redis://127.0.0.1:{proxy.port}/0", keyspace, "api", socket_timeout=SOCKET_TIMEOUT_S
    )
    cache = RedisCache(client, keyspace, pipelined=True)
    yield cache
    cache.close()
    await client.aclose()


async def test_concurrent_callers_each_get_their_own_reply(lane_cache: RedisCache) -> None:
    entries = [product_entry(i) for i in range(1, 201)]
    for entry in entries[:100]:
        await fill(lane_cache, entry, f'{{"id":"{entry}"}}'.encode())
    results = await asyncio.gather(
        *(lane_cache.get_or_lease(e, tags=demo_tags(e)) for e in entries)
    )
    for entry, result in zip(entries, results, strict=True):
        if entry in entries[:100]:
            assert result == Hit(f'{{"id":"{entry}"}}'.encode())
        else:
            assert isinstance(result, Lease)
    again = await lane_cache.get_or_lease(entries[150], tags=demo_tags(entries[150]))
    assert isinstance(again, Busy)  # the lease above is held


async def test_the_identity_check_runs_on_the_lanes_connection(lane_cache: RedisCache) -> None:
    check = identity_check(lane_cache.client)
    assert check is not None and check.checks == 0
    await lane_cache.get_or_lease(product_entry(1), tags=demo_tags(product_entry(1)))
    assert check.checks == 1  # the lane's connection, before its first script


async def test_a_script_flush_is_answered_by_eval(
    lane_cache: RedisCache, redis_server: RedisServer
) -> None:
    entry = product_entry(2)
    await fill(lane_cache, entry, b'{"v":1}')
    control = aioredis.Redis.from_url(redis_server.url)
    await control.script_flush()
    await control.aclose()
    assert await lane_cache.get_or_lease(entry, tags=demo_tags(entry)) == Hit(b'{"v":1}')


async def test_a_cut_connection_fails_the_callers_and_the_next_call_reconnects(
    lane_cache: RedisCache, proxy: TcpProxy
) -> None:
    entry = product_entry(3)
    await fill(lane_cache, entry, b'{"v":1}')
    proxy.set_delay(0.2)
    pending = asyncio.ensure_future(lane_cache.get_or_lease(entry, tags=demo_tags(entry)))
    await asyncio.sleep(0.05)
    assert proxy.cut() >= 1
    with pytest.raises(ConnectionError):
        await pending
    proxy.set_delay(0)
    check = identity_check(lane_cache.client)
    assert check is not None
    checked = check.checks
    assert await lane_cache.get_or_lease(entry, tags=demo_tags(entry)) == Hit(b'{"v":1}')
    assert check.checks == checked + 1  # a new connection, checked before use


async def test_a_silent_connection_times_out_every_caller_then_reconnects(
    lane_cache: RedisCache, proxy: TcpProxy
) -> None:
    entry = product_entry(4)
    await fill(lane_cache, entry, b'{"v":1}')
    proxy.black_hole()
    started = time.monotonic()
    results = await asyncio.gather(
        *(lane_cache.get_or_lease(entry, tags=demo_tags(entry)) for _ in range(5)),
        return_exceptions=True,
    )
    waited = time.monotonic() - started
    assert all(isinstance(r, TimeoutError) for r in results), results
    assert SOCKET_TIMEOUT_S * 0.9 <= waited < SOCKET_TIMEOUT_S * 4
    proxy.heal()
    assert await lane_cache.get_or_lease(entry, tags=demo_tags(entry)) == Hit(b'{"v":1}')


async def test_an_unreachable_redis_is_a_redis_error(keyspace: Keyspace) -> None:
    proxy = TcpProxy(1).start()  # forwards to a port nobody listens on
    client = connect(f"redis://127.0.0.1:{proxy.port}/0", keyspace, "api", socket_timeout=0.5)
    cache = RedisCache(client, keyspace, pipelined=True)
    try:
        with pytest.raises(RedisError):
            await cache.get_or_lease(product_entry(5), tags=demo_tags(product_entry(5)))
    finally:
        cache.close()
        await client.aclose()
        proxy.stop()
