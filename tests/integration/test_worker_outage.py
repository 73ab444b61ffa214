"""Invalidations pending while Redis is down are applied once it is back, then the epoch moves.

The broker here is RabbitMQ, so the retry task survives the cache Redis being stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from api.keys import product_entry
from pgbust.keys import Keyspace
from pgbust.protocol import Targets
from pgbust.redis_cache import RedisCache
from pgbust.task_sender import now_ms
from tests.integration.test_worker_helpers import (
    RABBITMQ_URL,
    delete_amqp_queue,
    fill_many,
    peek,
    sender_for,
    start_worker,
)
from tests.support.processes import ProcessManager
from tests.support.servers import RedisServer, wait_until
from worker import jobs

# the tests fill and invalidate as the invalidator would: they beat in its place too
pytestmark = pytest.mark.usefixtures("live_capture")


@pytest.fixture
def amqp_env(stack_env: dict[str, str], namespace: str) -> Iterator[dict[str, str]]:
    yield {"CELERY_BROKER_URL": RABBITMQ_URL, "PGBUST_RETRY_BACKOFF_MAX_S": "1"}
    delete_amqp_queue(f"{namespace}.worker")


def epoch(client: redis.Redis, keyspace: Keyspace) -> int:
    return int(client.get(keyspace.epoch) or 0)


def test_keys_pending_while_redis_is_stopped_are_deleted_once_it_returns_and_epoch_bumped(
    procs: ProcessManager,
    stack_env: dict[str, str],
    amqp_env: dict[str, str],
    redis_server: RedisServer,
    keyspace: Keyspace,
) -> None:
    pending, other = product_entry(1), product_entry(2)
    fill_many(redis_server, keyspace, {pending: b'{"v": "old"}', other: b'{"v": "old"}'})
    client = redis_server.client()
    epoch_before = epoch(client, keyspace)
    client.close()
    worker = start_worker(procs, env=amqp_env)
    redis_server.snapshot()  # it comes back with the stale entries: the worst case
    redis_server.stop(keep_snapshot=True)
    try:
        sender = sender_for(stack_env, broker_url=RABBITMQ_URL)
        sender.retry_invalidation([pending], [], False, "redis unreachable")
        sender.close()
        assert wait_until(lambda: "Retry in" in worker.log_tail(200), timeout=20)
    finally:
        redis_server.start()

    client = redis_server.client()
    try:
        assert wait_until(lambda: epoch(client, keyspace) > epoch_before, timeout=30)
        assert wait_until(lambda: peek(redis_server, keyspace, pending) is None, timeout=10)
        assert peek(redis_server, keyspace, other) is None  # the epoch bump killed it too
        assert wait_until(lambda: not client.exists(keyspace.value(pending)), timeout=10)
    finally:
        client.close()


async def _two_tasks_of_one_outage(redis_server: RedisServer, keyspace: Keyspace) -> list[bool]:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        cache = RedisCache(client, keyspace)
        await cache.ensure_server_identity(origin="test")  # the last bump before the outage
        await asyncio.sleep(0.01)
        enqueued = now_ms()  # both tasks were enqueued during the outage
        bumped = []
        for entry in ("product:1", "product:2"):
            targets = Targets(keys=frozenset({entry}))
            outcome = await jobs.retry_invalidation(cache, targets, "test", enqueued)
            bumped.append(outcome.epoch_bumped)
        return bumped
    finally:
        await client.aclose()


def test_one_outage_costs_one_epoch_bump_not_one_per_pending_task(
    redis_server: RedisServer, keyspace: Keyspace
) -> None:
    assert asyncio.run(_two_tasks_of_one_outage(redis_server, keyspace)) == [True, False]
