"""The worker tasks run by a real Celery worker process, against a real Redis and Postgres.

Tasks are enqueued the way the invalidator does it (pgbust.task_sender), on a queue named after the
test's namespace, so tests sharing a broker never take each other's tasks.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
import redis

from api.keys import category_page_entry, category_pages_tag, product_entry
from pgbust.devservers import free_port
from pgbust.entries import Entries
from pgbust.keys import Keyspace
from pgbust.protocol import Invalidation, Targets
from pgbust.redis_cache import RedisCache
from pgbust.task_sender import TaskSender
from tests.integration.test_worker_helpers import (
    fill,
    fill_many,
    load,
    peek,
    run,
    sender_for,
    start_worker,
    value_keys,
)
from tests.support.demo import DEMO
from tests.support.processes import ProcessManager
from tests.support.servers import RedisServer, wait_until
from worker import jobs

# the tests fill and invalidate as the invalidator would: they beat in its place too
pytestmark = pytest.mark.usefixtures("live_capture")


@pytest.fixture
def sender(stack_env: dict[str, str]) -> Iterator[TaskSender]:
    task_sender = sender_for(stack_env)
    yield task_sender
    task_sender.close()


def test_hot_key_is_back_in_cache_with_the_fresh_value_after_its_invalidation(
    procs: ProcessManager,
    sender: TaskSender,
    redis_server: RedisServer,
    keyspace: Keyspace,
    database_url: str,
    pg: psycopg.Connection[tuple[object, ...]],
    seeded: object,
) -> None:
    entry = product_entry(7)
    old = load(database_url, entry)
    assert old is not None
    fill(redis_server, keyspace, entry, old)
    start_worker(procs)

    pg.execute("UPDATE products SET price_cents = price_cents + 1 WHERE id = 7")
    fresh = load(database_url, entry)
    assert fresh is not None
    assert fresh != old
    targets = Targets(keys=frozenset({entry}))
    run(
        redis_server,
        keyspace,
        lambda cache: cache.invalidate(targets, Invalidation.of(targets, origin="cdc")),
    )
    sender.warm([entry])

    assert wait_until(lambda: peek(redis_server, keyspace, entry) is not None, timeout=20)
    assert peek(redis_server, keyspace, entry) == fresh
    assert orjson.loads(fresh)["version"] == orjson.loads(old)["version"] + 1


def test_audit_finds_an_entry_planted_stale_by_hand_and_removes_it(
    procs: ProcessManager,
    sender: TaskSender,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    keyspace: Keyspace,
    database_url: str,
    seeded: object,
) -> None:
    good, planted = product_entry(3), product_entry(5)
    fill(redis_server, keyspace, good, load(database_url, good) or b"")
    row = orjson.loads(load(database_url, planted) or b"")
    row["price_cents"] += 1_000  # a value the database never had
    fill(redis_server, keyspace, planted, orjson.dumps(row))
    start_worker(procs, env={"PGBUST_AUDIT_GRACE_MS": "50"})

    sender.audit(sample=100)

    audit_key = f"{keyspace.namespace}:worker:audit"
    assert wait_until(lambda: redis_client.exists(audit_key), timeout=20)
    report = orjson.loads(redis_client.get(audit_key) or b"")
    assert report["checked"] == 2
    assert report["stale"] == 1
    assert report["deleted"] == [planted]
    assert report["ratio"] == 0.5
    assert peek(redis_server, keyspace, planted) is None
    assert peek(redis_server, keyspace, good) == load(database_url, good)


def test_audit_command_prints_the_figures(
    stack_env: dict[str, str],
    redis_server: RedisServer,
    keyspace: Keyspace,
    database_url: str,
    seeded: object,
) -> None:
    entry = product_entry(9)
    row = orjson.loads(load(database_url, entry) or b"")
    row["stock"] = -1
    fill(redis_server, keyspace, entry, orjson.dumps(row))

    done = subprocess.run(
        [sys.executable, "-m", "worker", "audit", "--sample", "50", "--grace-ms", "0"],
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert "checked=1 stale=1 ratio=1.000000" in done.stdout
    assert peek(redis_server, keyspace, entry) is None


def test_large_tag_fan_out_is_collected_in_chunks(
    procs: ProcessManager,
    sender: TaskSender,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    keyspace: Keyspace,
) -> None:
    entries = [category_page_entry(1, 10, offset) for offset in range(0, 6_000, 10)]
    fill_many(redis_server, keyspace, dict.fromkeys(entries, b'{"items": []}'))
    targets = Targets(tags=frozenset({category_pages_tag(1)}))
    result = run(
        redis_server,
        keyspace,
        lambda cache: cache.invalidate(targets, Invalidation.of(targets, origin="cdc")),
    )
    assert len(result.garbage) == 1  # more members than the script frees inline
    start_worker(procs, env={"PGBUST_PURGE_CHUNK": "100"})

    sender.garbage(result.garbage)

    assert wait_until(lambda: not redis_client.exists(result.garbage[0]), timeout=20)
    assert value_keys(redis_client, keyspace) == []


def test_hot_counts_decay_and_stay_bounded(
    redis_server: RedisServer, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    redis_client.zadd(keyspace.hot, {f"product:{i}": i for i in range(1, 101)})

    left = run(redis_server, keyspace, lambda cache: jobs.decay_hot(cache, hot_max=10))

    assert left == 10
    assert redis_client.zrange(keyspace.hot, 0, -1, withscores=True) == [
        (f"product:{i}".encode(), i / 2) for i in range(91, 101)
    ]


def test_beat_runs_the_audit_and_the_worker_exports_its_ratio(
    procs: ProcessManager,
    redis_server: RedisServer,
    keyspace: Keyspace,
    database_url: str,
    seeded: object,
    tmp_path: Path,
) -> None:
    entry = product_entry(11)
    row = orjson.loads(load(database_url, entry) or b"")
    row["name"] = "planted"
    fill(redis_server, keyspace, entry, orjson.dumps(row))
    port = free_port()
    env = {"PGBUST_AUDIT_INTERVAL_S": "1", "PGBUST_AUDIT_GRACE_MS": "0"}
    start_worker(procs, env={**env, "PGBUST_WORKER_METRICS_PORT": str(port)})
    procs.spawn(
        "beat",
        ["celery", "-A", "worker", "beat", "--schedule", str(tmp_path / "beat-schedule")],
        env=env,
    )

    def exported() -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return ""

    assert wait_until(lambda: "pgbust_worker_audit_stale 1.0" in exported(), timeout=30)
    assert "pgbust_worker_audit_inconsistency_ratio 1.0" in exported()
    assert peek(redis_server, keyspace, entry) is None


def test_purge_after_a_flush_also_empties_the_tag_sets_of_purged_entries(
    procs: ProcessManager,
    sender: TaskSender,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    keyspace: Keyspace,
) -> None:
    entries = [category_page_entry(2, 10, offset) for offset in range(0, 200, 10)]
    fill_many(redis_server, keyspace, dict.fromkeys(entries, b'{"items": []}'))
    members = keyspace.tag_members(category_pages_tag(2))
    assert redis_client.scard(members) == 20
    flush = Targets(flush=True)
    run(redis_server, keyspace, lambda c: c.invalidate(flush, Invalidation.of(flush, origin="t")))
    live = category_page_entry(2, 10, 1_000)  # filled after the flush: stays, and stays listed
    fill(redis_server, keyspace, live, b'{"items": []}')
    start_worker(procs)

    sender.purge("flush")

    assert wait_until(lambda: redis_client.scard(members) == 1, timeout=20)
    assert redis_client.smembers(members) == {keyspace.value(live).encode()}
    assert value_keys(redis_client, keyspace) == [keyspace.value(live).encode()]


def test_warm_fills_what_exists_and_skips_the_rest(
    redis_server: RedisServer, keyspace: Keyspace, database_url: str, seeded: object
) -> None:
    cached, absent, unknown, fresh = "product:1", "product:999999", "nope:1", "product:2"
    fill(redis_server, keyspace, cached, load(database_url, cached) or b"")

    async def job(cache: RedisCache) -> jobs.WarmOutcome:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await jobs.warm(
                cache, conn, [cached, absent, unknown, fresh], served=Entries.of(DEMO)
            )

    outcome = run(redis_server, keyspace, job)

    assert outcome.filled == [fresh]
    assert (outcome.already_cached, outcome.missing, outcome.unknown) == (1, 1, 1)
    assert peek(redis_server, keyspace, fresh) == load(database_url, fresh)
