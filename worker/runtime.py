"""The sync bridge of the tasks: one event loop, Redis client and Postgres connection per
worker process, reused by every task it runs (no connect per task).

Created lazily in the process that runs tasks (after the prefork pool forked), and again if a
process finds one inherited from its parent. A broken Postgres connection is reopened by the
next task; the Redis client's pool reconnects by itself.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from pgbust import declaration
from pgbust.entries import Entries
from pgbust.keys import Keyspace
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import connect
from worker.settings import Settings

T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        keyspace = Keyspace(settings.namespace, cluster=settings.redis_cluster)
        self.redis = connect(
            settings.redis_url,
            keyspace,
            "worker",
            cluster=settings.redis_cluster,
            socket_connect_timeout=2.0,
            socket_timeout=10.0,
        )
        # on a cluster a retried invalidation finds each entry's home in the declaration
        self.cache = RedisCache(self.redis, keyspace, home_of=self._home_of)
        self._served: Entries | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @property
    def served(self) -> Entries:
        """The application's entries (PGBUST_CONFIG and the loaders it names), read on first
        use; the worker's start checks them already (worker/tasks.py)."""
        if self._served is None:
            self._served = Entries.of(declaration.load())
        return self._served

    def _home_of(self, entry: str) -> str:
        return self.served.declaration.home_of(entry)

    def run(self, job: Callable[[RedisCache], Awaitable[T]]) -> T:
        return self.loop.run_until_complete(job(self.cache))

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                self.settings.database_url, autocommit=True, connect_timeout=5
            )
        return self._conn

    def run_with_db(
        self, job: Callable[[RedisCache, psycopg.AsyncConnection[Any]], Awaitable[T]]
    ) -> T:
        async def main(cache: RedisCache) -> T:
            conn = await self._connection()
            try:
                return await job(cache, conn)
            except psycopg.Error:
                await conn.close()  # the next task starts on a fresh connection
                self._conn = None
                raise

        return self.run(main)

    def close(self) -> None:
        async def close_all() -> None:
            if self._conn is not None:
                await self._conn.close()
            await self.redis.aclose()

        self.loop.run_until_complete(close_all())
        self.loop.close()


_current: Runtime | None = None


def runtime(settings: Settings) -> Runtime:
    """This process's runtime (a new one after a fork: sockets are never shared)."""
    global _current
    if _current is None or _current.pid != os.getpid():
        _current = Runtime(settings)
    return _current
