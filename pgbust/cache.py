"""pgbust.Cache: the cache of one application process, what `import pgbust` gives an app.

    cache = pgbust.Cache(pgbust.CacheSettings(), pgbust.load_declaration(), loaders)
    async with cache:
        read = await cache.read("order:{id}", id="A-17")
        ...
        await cache.wrote("public.orders", "update", old={...}, new={...})

It holds the L1 (in process), the Redis adapter (L2, leases, fill guards), the subscriber
that evicts what other processes invalidated, the Postgres pool the loaders run on, and the
metrics; the declaration says which tags each entry is filed under and what a write
invalidates. Nothing here knows the application's tables: they are all in the declaration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Literal

import psycopg
import redis.asyncio as aioredis
from psycopg_pool import PoolTimeout
from redis.exceptions import RedisError

from pgbust import redis_policy
from pgbust.declaration import Declaration
from pgbust.gc_pauses import GcPauses, freeze_startup_heap
from pgbust.keys import Keyspace
from pgbust.l1 import L1Cache
from pgbust.loaders import Loaders
from pgbust.metrics import Metrics
from pgbust.postgres import Database, make_pool
from pgbust.protocol import Invalidation, Targets
from pgbust.read_path import AfterLoadHook, ReadResult, TieredCache
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import connect
from pgbust.redis_policy import RedisMemory
from pgbust.replica import UNKNOWN_LSN
from pgbust.rules import targets_for, write_change
from pgbust.settings import CacheSettings
from pgbust.subscriber import Subscriber, pubsub_client

log = logging.getLogger(__name__)

# A write waits at most this long for its own invalidation message to come back on this
# process's subscription (see Cache.invalidate).
ECHO_WAIT_S = 0.25
HOT_SEND_EVERY_S = 0.1  # hot-set counts without a lane: gathered this long, then sent at once


class Cache:
    def __init__(
        self,
        settings: CacheSettings,
        declaration: Declaration,
        loaders: Loaders,
        *,
        after_load: AfterLoadHook | None = None,
        pool_name: str = "pgbust",
    ) -> None:
        undeclared = [t for t in loaders.templates if t not in declaration.entries]
        if undeclared:
            raise ValueError(
                f"a loader is registered for {undeclared[0]!r}, which {declaration.path} does "
                'not declare: add [entries."..."] for it (with the tags it is filed under)'
            )
        self.settings = settings
        self.declaration = declaration
        self.loaders = loaders
        self.l1 = L1Cache(settings.l1_max_entries, settings.l1_max_bytes, ttl_s=settings.ttl_s)
        self.metrics = Metrics(self.l1)
        self._gc_pauses = GcPauses(self.metrics.gc_pauses)
        self.keyspace = Keyspace(settings.namespace, cluster=settings.redis_cluster)
        self._after_load = after_load
        self._pool_name = pool_name
        self._db: Database | None = None
        self._tiers: TieredCache | None = None
        self.redis: aioredis.Redis | None = None
        self.l2: RedisCache | None = None
        self.subscriber: Subscriber | None = None
        self.redis_memory: RedisMemory | None = None
        self._pubsub_redis: aioredis.Redis | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hot_pending: dict[str, int] = {}  # entry -> reads sampled, not yet sent

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        pool = make_pool(settings.database_url, settings.db_pool_size, self._pool_name)
        await pool.open(wait=True, timeout=10.0)
        replica = None
        if settings.read_database_url:  # leased loads may read it (pgbust/replica.py)
            replica = make_pool(
                settings.read_database_url, settings.db_pool_size, f"{self._pool_name}-replica"
            )
            # not waited for: an unreachable replica must not keep the API from starting
            # (its misses read the primary meanwhile, pgbust_api_replica_fallbacks_total)
            await replica.open(wait=False)
        self._db = Database(pool, self.loaders, replica=replica, metrics=self.metrics)
        if settings.cache_mode != "off":
            self.redis = connect(
                settings.redis_url,
                self.keyspace,
                "api",
                cluster=settings.redis_cluster,
                socket_connect_timeout=2.0,
                socket_timeout=5.0,
            )
            # only a cache invalidated by events may require (and trust) live capture
            self.l2 = RedisCache(
                self.redis,
                self.keyspace,
                require_live_capture=settings.subscribes,
                lsn_marker=replica is not None,
                pipelined=True,  # the read path's scripts: pgbust.redis_lane (not on a cluster)
                home_of=self.declaration.home_of,  # a cluster's write-path invalidation
            )
        self._tiers = TieredCache(
            declaration=self.declaration,
            l1=self.l1,
            l2=self.l2,
            db=self._db,
            metrics=self.metrics,
            lease_ms=settings.lease_ms,
            ttl_ms=settings.ttl_ms,
            after_load=self._after_load,
        )
        if self.redis is not None:
            memory = await redis_policy.read(self.redis)
            redis_policy.log_verdict(memory, "api")
            self.metrics.redis_memory_policy.labels(memory.policy, memory.verdict).set(1)
            self.redis_memory = memory
        if settings.subscribes and self.l2 is not None:
            self.l1.disable()  # until the subscription is confirmed
            self._pubsub_redis = pubsub_client(settings.redis_url, cluster=settings.redis_cluster)
            self.subscriber = Subscriber(
                self._pubsub_redis,
                self.l2,
                self.l1,
                self.metrics,
                silence_s=settings.subscriber_silence_s,
            )
            self._spawn(self.subscriber.run())
        elif settings.cache_mode == "off":
            self.l1.disable()
        self._gc_pauses.install()
        if settings.gc_freeze:
            self.metrics.gc_frozen.set(freeze_startup_heap())

    async def close(self) -> None:
        self._gc_pauses.remove()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.l2 is not None:
            self.l2.close()
        for client in (self._pubsub_redis, self.redis):
            if client is not None:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
        if self._db is not None:
            await self._db.pool.close()
            if self._db.replica is not None:
                await self._db.replica.close()

    async def __aenter__(self) -> Cache:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("pgbust.Cache is not started (await cache.start())")
        return self._db

    @property
    def tiers(self) -> TieredCache:
        """The read path (L1 -> Redis -> loaders), for tests and the HTTP fast path."""
        if self._tiers is None:
            raise RuntimeError("pgbust.Cache is not started (await cache.start())")
        return self._tiers

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- reads --------------------------------------------------------------------------------

    def name(self, template: str, **values: Any) -> str:
        """The entry's name: a declared template rendered with these values (escaped)."""
        return self.declaration.render(template, values) if values else template

    async def read(self, entry: str, /, **values: Any) -> ReadResult:
        """Read through L1 -> Redis -> the entry's loader, with every fill guard.

        `entry` is a rendered name ("order:hello") or, with values, a declared template
        ("order:{id}", id="hello"). The payload is the loader's bytes (None: no such row)."""
        name = self.declaration.render(entry, values) if values else entry
        result = await self.tiers.read(name)
        self.sample_read(name)
        return result

    def l1_hit(self, entry: str) -> bytes | None:
        """The L1 payload of a rendered name, or None (no I/O: for pre-routing fast paths)."""
        payload = self.tiers.l1_hit(entry)
        if payload is not None:
            self.sample_read(entry)
        return payload

    # --- the application's own writes ---------------------------------------------------------

    async def wrote(
        self,
        table: str,
        op: Literal["insert", "update", "delete"],
        *,
        old: Mapping[str, Any] | None = None,
        new: Mapping[str, Any] | None = None,
        changed: Iterable[str] | None = None,
    ) -> Targets:
        """After the app's own transaction committed: invalidate what the declaration says
        this row change invalidates, before the response (read-your-writes). The change
        capture sees the same commit and invalidates the same again (idempotent)."""
        declared = self.declaration.table(table)
        if declared is None:
            raise ValueError(f"{table!r} is not a table of {self.declaration.path}")
        columns = declared.captured_columns

        def picked(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
            # only what the rules read: other columns may hold values with no key text form
            return None if row is None else {c: row[c] for c in columns if c in row}

        change = write_change(
            declared.relation, op, old=picked(old), new=picked(new), changed=changed
        )
        targets = targets_for(self.declaration, change)
        await self.invalidate(targets)
        return targets

    async def invalidate(self, targets: Targets) -> None:
        """Invalidate targets in Redis (and every other process's L1 via the message) and in
        this L1. Only the cdc mode invalidates (ttl mode trusts its TTL; off has no cache).

        Then wait, briefly (at most ECHO_WAIT_S), for the message to come back on this
        process's own subscription: Redis writes one PUBLISH to every subscriber's connection
        at once, so by then it is on its way into every other instance too, which narrows the
        window in which a client whose next read lands on another instance could still see
        the old value there to that instance's own processing delay."""
        if self.settings.cache_mode != "cdc" or self.l2 is None:
            return
        reason = f"api write {uuid.uuid4().hex}"
        message = Invalidation.of(
            targets, origin="api", ts_us=time.time_ns() // 1000, reason=reason
        )
        subscriber = self.subscriber
        echo = subscriber.expect_echo(reason) if subscriber and subscriber.healthy else None
        try:
            # with a read replica the write's commit must not be readable from a replica that
            # has not replayed it once its entries are gone: raise the LSN marker past it
            lsn = await self._written_lsn() if self.db.replica is not None else None
            await self.l2.invalidate(targets, message, lsn=lsn)
            self.metrics.invalidations_sent.labels("ok").inc()
        except RedisError as exc:
            # committed already: the CDC path (and the worker's retries) will invalidate L2
            self.metrics.invalidations_sent.labels("redis_error").inc()
            log.warning("write-path invalidation of %s failed: %s", sorted(targets.keys), exc)
            echo = None
        if targets.flush:
            self.l1.flush()
        else:
            self.l1.evict(targets.keys, targets.tags)
        if echo is not None and subscriber is not None:
            try:
                await asyncio.wait_for(echo, ECHO_WAIT_S)
            except TimeoutError:
                self.metrics.invalidations_sent.labels("echo_timeout").inc()
            finally:
                subscriber.forget_echo(reason)

    async def _written_lsn(self) -> int:
        """An LSN past every commit so far (the caller's write included), or UNKNOWN_LSN
        (the marker is then deleted: readers use the primary until the invalidator's next
        batch writes it again)."""
        try:
            return await self.db.current_lsn()
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("cannot read the primary's WAL position (%s): LSN marker dropped", exc)
            return UNKNOWN_LSN

    # --- hot-key sampling (refresh-ahead input for the invalidator) ---------------------------

    def sample_read(self, entry: str) -> None:
        """ZINCRBY the hot set with probability hot_sample_rate; never on the latency path."""
        rate = self.settings.hot_sample_rate
        if self.l2 is not None and rate > 0 and random.random() < rate:
            # over the read path's lane, without a task: a fraction of the CPU of an L1 hit
            sent = self.l2.count_hot_nowait(entry)
            if sent is not None:
                sent.add_done_callback(self._hot_counted)
                return
            # no lane (a cluster): a command through the cluster client, in a task of its
            # own, cost an L1 hit ~20% of its throughput; counted here, sent a tick later
            # as one pipeline (the hot set is one key: one node, one round trip)
            self._hot_pending[entry] = self._hot_pending.get(entry, 0) + 1
            if len(self._hot_pending) == 1:
                self._spawn(self._send_hot_counts())

    def _hot_counted(self, sent: asyncio.Future[Any]) -> None:
        if not sent.cancelled() and sent.exception() is not None:
            self.metrics.redis_errors.labels("hot_sample").inc()

    async def _send_hot_counts(self) -> None:
        assert self.l2 is not None
        await asyncio.sleep(HOT_SEND_EVERY_S)
        counts, self._hot_pending = self._hot_pending, {}
        try:
            await self.l2.count_hot(counts)
        except RedisError:
            self.metrics.redis_errors.labels("hot_sample").inc()

    # --- health -------------------------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {"mode": self.settings.cache_mode}
        ok = True
        try:
            await asyncio.wait_for(self.db.ping(), timeout=2.0)
            checks["database"] = "ok"
        except Exception as exc:
            ok = False
            checks["database"] = f"error: {type(exc).__name__}"
        if self.db.replica is not None:
            # informative only: reads fall back to the primary while the replica is away
            try:
                replayed = await asyncio.wait_for(self.db.replay_lsn(), timeout=2.0)
                checks["replica"] = (
                    {"state": "ok", "replay_lsn": replayed}
                    if replayed
                    else {"state": "not replaying (not a standby): loads read the primary"}
                )
            except Exception as exc:
                checks["replica"] = {"state": f"error: {type(exc).__name__}"}
        if self.redis_memory is not None:
            checks["redis_memory"] = {
                "policy": self.redis_memory.policy,
                "verdict": self.redis_memory.verdict,
            }
        if self.redis is None:
            checks["redis"] = "unused"
        else:
            try:
                await asyncio.wait_for(self.redis.ping(), timeout=2.0)
                checks["redis"] = "ok"
            except Exception as exc:
                ok = False
                checks["redis"] = f"error: {type(exc).__name__}"
        if self.subscriber is None:
            checks["subscriber"] = {"state": "not used in this mode"}
        else:
            checks["subscriber"] = self.subscriber.describe()
            ok = ok and self.subscriber.healthy
        checks["l1"] = {
            "enabled": self.l1.enabled,
            "entries": len(self.l1),
            "bytes": self.l1.size_bytes,
            "flushes": self.l1.stats.flushes,
        }
        return ok, checks
