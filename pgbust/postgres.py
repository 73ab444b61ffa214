"""The Postgres adapter of the read path: one async connection pool, autocommit reads, and
the application's loaders run on its connections."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from pgbust.loaders import Loaded, Loaders


def make_pool(
    database_url: str, max_size: int, name: str = "pgbust"
) -> AsyncConnectionPool[AsyncConnection[Any]]:
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=5.0,
        kwargs={"autocommit": True},
        name=name,
    )


class Database:
    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]], loaders: Loaders) -> None:
        self.pool = pool
        self.loaders = loaders

    async def load(self, entry: str) -> Loaded | None:
        """The entry as its loader computes it, or None when it does not exist."""
        async with self.pool.connection() as conn:
            return await self.loaders.load(conn, entry)

    async def ping(self) -> None:
        async with self.pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
