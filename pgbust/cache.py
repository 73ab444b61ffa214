"""Everything one API process holds at run time, built in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.cache import AfterLoadHook, TieredCache
from api.db import Database, make_pool
from api.l1 import L1Cache
from api.metrics import Metrics
from api.settings import Settings
from api.subscriber import Subscriber, pubsub_client
from pgbust import redis_policy
from pgbust.keys import Keyspace
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import connect
from pgbust.redis_policy import RedisMemory

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    l1: L1Cache
    metrics: Metrics
    db: Database
    redis: aioredis.Redis | None
    l2: RedisCache | None
    cache: TieredCache
    subscriber: Subscriber | None = None
    redis_memory: RedisMemory | None = None
    _pubsub_redis: aioredis.Redis | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @classmethod
    async def start(
        cls,
        settings: Settings,
        l1: L1Cache,
        metrics: Metrics,
        after_load: AfterLoadHook | None = None,
    ) -> Runtime:
        pool = make_pool(settings.database_url, settings.db_pool_size)
        await pool.open(wait=True, timeout=10.0)
        db = Database(pool)
        keyspace = Keyspace(settings.namespace)
        redis_client: aioredis.Redis | None = None
        l2: RedisCache | None = None
        if settings.cache_mode != "off":
            redis_client = connect(
                settings.redis_url, keyspace, "api", socket_connect_timeout=2.0, socket_timeout=5.0
            )
            # only a cache invalidated by events may require (and trust) live capture
            l2 = RedisCache(redis_client, keyspace, require_live_capture=settings.subscribes)
        cache = TieredCache(
            l1=l1,
            l2=l2,
            db=db,
            metrics=metrics,
            lease_ms=settings.lease_ms,
            ttl_ms=settings.ttl_ms,
            after_load=after_load,
        )
        runtime = cls(settings, l1, metrics, db, redis_client, l2, cache)
        if redis_client is not None:
            memory = await redis_policy.read(redis_client)
            redis_policy.log_verdict(memory, "api")
            metrics.redis_memory_policy.labels(memory.policy, memory.verdict).set(1)
            runtime.redis_memory = memory
        if settings.subscribes and l2 is not None:
            l1.disable()  # until the subscription is confirmed
            runtime._pubsub_redis = pubsub_client(settings.redis_url)
            runtime.subscriber = Subscriber(
                runtime._pubsub_redis, l2, l1, metrics, silence_s=settings.subscriber_silence_s
            )
            runtime._spawn(runtime.subscriber.run())
        elif settings.cache_mode == "off":
            l1.disable()
        return runtime

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in (self._pubsub_redis, self.redis):
            if client is not None:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
        await self.db.pool.close()

    @property
    def token(self) -> bytes:
        return self.settings.api_token.get_secret_value().encode()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- hot-key sampling (refresh-ahead input for the invalidator) -------------------------

    def sample_read(self, entry: str) -> None:
        """ZINCRBY the hot set with probability hot_sample_rate; never on the latency path."""
        rate = self.settings.hot_sample_rate
        if self.l2 is not None and rate > 0 and random.random() < rate:
            self._spawn(self._count_hot(entry))

    async def _count_hot(self, entry: str) -> None:
        assert self.l2 is not None
        try:
            await self.l2.client.zincrby(self.l2.keyspace.hot, 1, entry)
        except RedisError:
            self.metrics.redis_errors.labels("hot_sample").inc()

    # --- health -----------------------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {"mode": self.settings.cache_mode}
        ok = True
        try:
            await asyncio.wait_for(self.db.ping(), timeout=2.0)
            checks["database"] = "ok"
        except Exception as exc:
            ok = False
            checks["database"] = f"error: {type(exc).__name__}"
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
