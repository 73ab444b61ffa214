"""A flush of 100k cached entries is reclaimed by the worker without blocking Redis.

A TRUNCATE (or any table-wide change) makes the invalidator flush the namespace: the epoch
bump kills every entry at once, then `pgbust.purge_dead` frees the memory with SCAN + a chunked
UNLINK script. Redis's SLOWLOG (threshold 50 ms) proves no command blocked it for longer.
"""

from __future__ import annotations

import pytest
import redis

from api.keys import product_entry
from pgbust.keys import Keyspace
from pgbust.protocol import Invalidation
from pgbust.rules import EVERYTHING
from tests.integration.test_worker_helpers import (
    fill_many,
    peek,
    run,
    sender_for,
    start_worker,
    value_keys,
)
from tests.support.design import SLOW_US
from tests.support.processes import ProcessManager
from tests.support.servers import RedisServer, wait_until
from worker.stats import stats_key

# the tests fill and invalidate as the invalidator would: they beat in its place too
pytestmark = pytest.mark.usefixtures("live_capture")

ENTRIES = 100_000


def cache_entries(client: redis.Redis, keyspace: Keyspace, count: int) -> None:
    """`count` product entries as fills of epoch 0 store them (pipelined, ~200 bytes each)."""
    payload = b'{"id": %d, "name": "product %d", "price_cents": 1999, "stock": 7, "pad": "%s"}'
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(keyspace.value(product_entry(i)), b"0.0|" + payload % (i, i, b"x" * 100))
        if i % 5_000 == 4_999:
            pipe.execute()
    pipe.execute()


@pytest.mark.slow
def test_truncate_of_100k_cached_entries_is_purged_with_no_command_over_50ms(
    procs: ProcessManager,
    stack_env: dict[str, str],
    redis_server: RedisServer,
    slowlog: redis.Redis,
    keyspace: Keyspace,
) -> None:
    cache_entries(slowlog, keyspace, ENTRIES)
    assert len(value_keys(slowlog, keyspace)) == ENTRIES
    targets = EVERYTHING  # what a TRUNCATE invalidates
    assert targets.flush
    run(
        redis_server,
        keyspace,
        lambda cache: cache.invalidate(targets, Invalidation.of(targets, origin="cdc")),
    )
    survivor = product_entry(ENTRIES + 1)  # filled after the flush: live, must stay
    fill_many(redis_server, keyspace, {survivor: b'{"id": 0}'})
    slowlog.slowlog_reset()
    start_worker(procs)

    sender = sender_for(stack_env)
    sender.purge("truncate products")
    sender.close()

    assert wait_until(
        lambda: int(slowlog.hget(stats_key(keyspace), "purged") or 0) >= ENTRIES, timeout=40
    )
    assert value_keys(slowlog, keyspace) == [keyspace.value(survivor).encode()]
    assert peek(redis_server, keyspace, survivor) == b'{"id": 0}'
    slow = slowlog.slowlog_get(1_024)
    assert slow == [], f"commands over {SLOW_US / 1000} ms: {slow}"
