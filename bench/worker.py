"""Worker benchmarks: how long a hot key is out of cache after its invalidation (refresh-ahead
through a real Celery worker), how a flush of many entries is reclaimed (total time and the
longest single Redis command, from SLOWLOG), and what one consistency audit costs.

Runs a private redis-server (cache and broker, db 1), a scratch database on DATABASE_URL's
server (created, seeded, dropped at the end) and one `celery -A worker worker` process.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis

from api.keys import product_entry
from api.loaders import LOADERS, load_entry
from bench import report
from bench.scratch import scratch_database
from pgbust import declaration
from pgbust.entries import Entries
from pgbust.keys import Keyspace
from pgbust.protocol import Invalidation, Lease, Targets
from pgbust.redis_cache import RedisCache
from pgbust.task_sender import TaskSender
from tests.support.heartbeat import HeartbeatPlayer
from tests.support.processes import ProcessManager
from tests.support.servers import RedisServer, wait_until
from worker import audit as audit_job
from worker.settings import Settings
from worker.stats import stats_key

PRODUCTS = 10_000


class Bench:
    def __init__(self, redis_server: RedisServer, database_url: str, namespace: str) -> None:
        self.redis_server = redis_server
        self.database_url = database_url
        self.keyspace = Keyspace(namespace)
        self.sync = redis_server.client()
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
            },
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_server.url,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/1",
            "PGBUST_NAMESPACE": namespace,
        }
        given: dict[str, Any] = {
            k: self.env[k] for k in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
        }
        self.sender = TaskSender(Settings(namespace=namespace, **given))

    async def _cache(self) -> tuple[aioredis.Redis, RedisCache]:
        client = aioredis.Redis.from_url(self.redis_server.url)
        return client, RedisCache(client, self.keyspace)

    # --- refresh-ahead -----------------------------------------------------------------------

    async def warm_round(self, conn: psycopg.AsyncConnection[Any], product_id: int) -> float:
        """Update a cached hot product, invalidate it, enqueue its warm-up; ms until refilled."""
        entry = product_entry(product_id)
        client, cache = await self._cache()
        try:
            await conn.execute("UPDATE products SET stock = stock + 1 WHERE id = %s", (product_id,))
            fresh = await load_entry(conn, entry)
            targets = Targets(keys=frozenset({entry}))
            started = time.perf_counter()
            await cache.invalidate(targets, Invalidation.of(targets, origin="bench"))
            await asyncio.to_thread(self.sender.warm, [entry])
            while True:
                cached = await cache.peek(entry, tags=())  # a product: no tags
                if cached is not None:
                    break
                await asyncio.sleep(0.0005)
            elapsed = (time.perf_counter() - started) * 1000
            assert cached == fresh, "warmed value differs from the database"
            return elapsed
        finally:
            await client.aclose()

    async def warm(self, rounds: int) -> dict[str, Any]:
        samples = []
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True
        ) as conn:
            for i in range(rounds):
                samples.append(await self.warm_round(conn, 1 + i % PRODUCTS))
        return {"invalidation_to_refilled_ms": report.percentiles(samples)}

    # --- purge after a flush -------------------------------------------------------------------

    def purge(self, entries: int) -> dict[str, Any]:
        pipe = self.sync.pipeline(transaction=False)
        for i in range(entries):
            pipe.set(self.keyspace.value(product_entry(i)), b"0.0|" + b"x" * 200)
            if i % 5_000 == 4_999:
                pipe.execute()
        pipe.execute()

        async def flush() -> None:
            client, cache = await self._cache()
            try:
                await cache.bump_epoch("bench truncate", origin="bench")
            finally:
                await client.aclose()

        asyncio.run(flush())
        self.sync.config_set("slowlog-log-slower-than", 0)
        self.sync.config_set("slowlog-max-len", 100_000)
        self.sync.slowlog_reset()
        started = time.perf_counter()
        self.sender.purge("bench")
        purged = stats_key(self.keyspace)
        wait_until(lambda: int(self.sync.hget(purged, "purged") or 0) >= entries, timeout=300)
        total_s = time.perf_counter() - started
        log: list[dict[str, Any]] = self.sync.slowlog_get(100_000)
        self.sync.config_set("slowlog-log-slower-than", 10_000)
        purge_commands = [e for e in log if _command_name(e) in _PURGE_CMDS]
        longest = max((e["duration"] for e in purge_commands), default=0)
        return {
            "entries": entries,
            "total_s": round(total_s, 3),
            "entries_per_s": round(entries / total_s),
            "purge_commands": dict(Counter(_command_name(e) for e in purge_commands)),
            "longest_command_ms": round(longest / 1000, 3),
        }

    # --- audit -------------------------------------------------------------------------------

    async def audit(self, cached: int, sample: int) -> dict[str, Any]:
        client, cache = await self._cache()
        try:
            async with await psycopg.AsyncConnection.connect(
                self.database_url, autocommit=True
            ) as conn:
                for i in range(1, cached + 1):
                    entry = product_entry(i)
                    lease = await cache.get_or_lease(entry, tags=())  # a product: no tags
                    payload = await load_entry(conn, entry)
                    if isinstance(lease, Lease) and payload is not None:
                        await cache.fill(
                            entry,
                            lease.token,
                            lease.stamp,
                            payload,
                            tags=(),
                            rows=(),
                            since=lease.since,
                        )
                served = Entries(declaration.load(), LOADERS)
                runs = [
                    await audit_job.audit(cache, conn, sample, 0, served=served) for _ in range(5)
                ]
        finally:
            await client.aclose()
        return {
            "cached": cached,
            "sample": sample,
            "checked": runs[-1].checked,
            "duration_ms": report.percentiles([r.duration_ms for r in runs]),
        }


_PURGE_CMDS = {"SCAN", "EVALSHA", "EVAL"}


def _command_name(entry: dict[str, Any]) -> str:
    command = entry["command"]
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return text.split(" ", 1)[0].upper()


def run(out: Path, quick: bool) -> None:
    rounds, entries = (20, 20_000) if quick else (200, 100_000)
    server_url = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")
    with (
        tempfile.TemporaryDirectory() as tmp,
        scratch_database(server_url, PRODUCTS) as database_url,
    ):
        redis_server = RedisServer(Path(tmp) / "redis")
        redis_server.start()
        namespace = f"bench{uuid.uuid4().hex[:6]}"
        bench = Bench(redis_server, database_url, namespace)
        procs = ProcessManager(bench.env, Path(tmp))
        # the benchmark invalidates by itself: it beats in the invalidator's place, or the
        # worker's warm-ups would find capture not live and fill nothing
        player = HeartbeatPlayer(redis_server.url, bench.keyspace).start()
        try:
            proc = procs.celery_worker("worker", extra=["--without-mingle", "--without-gossip"])
            proc.wait_ready(lambda: " ready." in proc.log_path.read_text(errors="replace"), 60)
            warm = asyncio.run(bench.warm(rounds))
            purge = bench.purge(entries)
            audit = asyncio.run(bench.audit(cached=min(PRODUCTS, 5_000), sample=200))
        finally:
            player.stop()
            bench.sender.close()
            procs.stop_all()
            redis_server.stop(keep_snapshot=False)
    data = {"quick": quick, "warm": warm, "purge": purge, "audit": audit}
    w, a = warm["invalidation_to_refilled_ms"], audit["duration_ms"]
    table = (
        report.markdown_table(
            ["measure", "p50", "p99", "max", "n"],
            [
                [
                    "hot key: invalidation -> refilled by worker (ms)",
                    w["p50"],
                    w["p99"],
                    w["max"],
                    w["n"],
                ],
                [f"audit of {audit['sample']} entries (ms)", a["p50"], a["p99"], a["max"], a["n"]],
            ],
        )
        + "\n"
        + report.markdown_table(
            ["purge after flush", "value"],
            [[key, value] for key, value in purge.items()],
        )
    )
    report.write(out, "worker", data, table)
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
