"""The Postgres adapter of the API: one async connection pool, autocommit reads."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from api.loaders import load_entry


def make_pool(database_url: str, max_size: int) -> AsyncConnectionPool[AsyncConnection[Any]]:
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=5.0,
        kwargs={"autocommit": True},
        name="pgbust-api",
    )


class Database:
    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self.pool = pool

    async def load(self, entry: str) -> bytes | None:
        """The entry's JSON as the loaders build it, or None when the row does not exist."""
        async with self.pool.connection() as conn:
            return await load_entry(conn, entry)

    async def ping(self) -> None:
        async with self.pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
