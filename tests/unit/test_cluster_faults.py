"""redis-py's cluster client has faults of its own that are not RedisErrors; pgbust's callers
handle RedisError as "Redis unreachable", so they must arrive as one."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError

from pgbust.redis_connect import cluster_faults_as_redis_errors


async def test_a_slot_no_node_covers_reaches_the_caller_as_a_redis_connection_error() -> None:
    @cluster_faults_as_redis_errors
    async def read() -> int:
        raise SlotNotCoveredError("slot 42 is not covered by the cluster")

    with pytest.raises(RedisConnectionError, match="slot 42"):
        await read()


async def test_answers_and_other_errors_pass_through_unchanged() -> None:
    @cluster_faults_as_redis_errors
    async def answer(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n * 2

    assert await answer(21) == 42
    with pytest.raises(ValueError, match="negative"):
        await answer(-1)
