"""A write on a connection the server already closed, under uvloop (the API's loop): the
cluster adapter hands it to its callers as a Redis connection error, which they handle as
"Redis unreachable" (seen as a 500 in the middle of a CLUSTER FAILOVER before)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError

from pgbust.redis_connect import cluster_faults_as_redis_errors
from tests.support.servers import RedisServer


async def _read_after_the_server_side_closed(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.ping()
        (connection,) = client.connection_pool._available_connections
        assert connection._writer is not None
        connection._writer.transport.close()  # as a node's close of the socket leaves it
        await asyncio.sleep(0)

        @cluster_faults_as_redis_errors
        async def read() -> object:
            return await client.get("anything")

        await read()
    finally:
        await client.aclose()


def test_a_write_on_a_closed_connection_under_uvloop_is_a_redis_connection_error(
    redis_server: RedisServer,
) -> None:
    with pytest.raises(RedisConnectionError, match="connection closed"):
        uvloop.run(_read_after_the_server_side_closed(redis_server.url))


def test_a_runtime_error_of_the_caller_itself_passes_through_unchanged() -> None:
    @cluster_faults_as_redis_errors
    async def broken() -> None:
        raise RuntimeError("not redis")

    async def call() -> None:
        await broken()

    with pytest.raises(RuntimeError, match="not redis"):
        uvloop.run(call())
