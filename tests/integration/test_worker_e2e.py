"""The whole chain with the real invalidator: a change typed into psql reaches the workers.

psql -> trigger -> invalidator -> Redis (+ pgbust.task_sender) -> Celery worker -> Redis.
"""

from __future__ import annotations

import orjson
import psycopg
import pytest
import redis

from api.keys import product_entry
from pgbust.keys import Keyspace
from tests.integration.test_worker_helpers import (
    fill,
    load,
    peek,
    start_worker,
    value_keys,
)
from tests.integration.test_worker_purge import ENTRIES, cache_entries
from tests.support.design import SLOW_US
from tests.support.processes import ProcessManager
from tests.support.servers import RedisServer, wait_until
from worker.stats import stats_key

# the tests fill and invalidate as the invalidator would: they beat in its place too
pytestmark = pytest.mark.usefixtures("live_capture")


def test_update_in_psql_of_a_hot_product_is_rewarmed_with_the_new_value(
    procs: ProcessManager,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    keyspace: Keyspace,
    database_url: str,
    pg: psycopg.Connection[tuple[object, ...]],
    seeded: object,
) -> None:
    entry = product_entry(7)
    old = load(database_url, entry)
    assert old is not None
    fill(redis_server, keyspace, entry, old)
    redis_client.zadd(keyspace.hot, {entry: 50})
    start_worker(procs)
    procs.invalidator()
    warmed_before = int(redis_client.hget(stats_key(keyspace), "warm_filled") or 0)

    pg.execute("UPDATE products SET stock = stock + 5 WHERE id = 7")
    fresh = load(database_url, entry)
    assert fresh is not None

    assert wait_until(
        lambda: int(redis_client.hget(stats_key(keyspace), "warm_filled") or 0) > warmed_before,
        timeout=20,
    )
    assert peek(redis_server, keyspace, entry) == fresh
    assert orjson.loads(fresh)["stock"] == orjson.loads(old)["stock"] + 5


@pytest.mark.slow
def test_truncate_in_psql_with_100k_cached_entries_is_purged_with_no_command_over_50ms(
    procs: ProcessManager,
    redis_server: RedisServer,
    slowlog: redis.Redis,
    keyspace: Keyspace,
    pg: psycopg.Connection[tuple[object, ...]],
    seeded: object,
) -> None:
    cache_entries(slowlog, keyspace, ENTRIES)
    start_worker(procs)
    procs.invalidator()
    slowlog.slowlog_reset()

    pg.execute("TRUNCATE products")

    assert wait_until(
        lambda: int(slowlog.hget(stats_key(keyspace), "purged") or 0) >= ENTRIES, timeout=40
    )
    assert value_keys(slowlog, keyspace) == []
    slow = slowlog.slowlog_get(1_024)
    assert slow == [], f"commands over {SLOW_US / 1000} ms: {slow}"
