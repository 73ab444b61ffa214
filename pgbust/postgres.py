"""The Postgres adapter of the read path: one async connection pool, autocommit reads, and
the application's loaders run on its connections. With a read replica
(PGBUST_READ_DATABASE_URL) a second pool, which leased loads use only while the replica has
replayed up to the lease's LSN marker (pgbust/replica.py); everything else reads the primary."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pgbust import replica
from pgbust.loaders import Loaded, Loaders
from pgbust.metrics import Metrics

log = logging.getLogger(__name__)

# The first statement on the replica connection the loader then runs on: replay only moves
# forward, so the loader's own statements see at least what this one reports as replayed.
# NULL on a server that is not in recovery (a promoted replica keeps its last replay LSN, but
# takes writes the primary never sees, or the other way round): the primary is used.
REPLAY_LSN = "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() END::text"
# A replica that failed (unreachable, refused, a load that errored) is left alone this long:
# misses read the primary at once instead of each waiting for the replica to fail again.
REPLICA_RETRY_S = 1.0
# How long a miss waits for a replica connection before reading the primary instead.
REPLICA_CONNECT_WAIT_S = 0.5


def make_pool(
    database_url: str, max_size: int, name: str = "pgbust"
) -> AsyncConnectionPool[AsyncConnection[Any]]:
    kwargs: dict[str, Any] = {"autocommit": True}
    if "application_name" not in conninfo_to_dict(database_url):
        # who is who in pg_stat_activity (an application_name in the URL wins)
        kwargs["application_name"] = name
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=5.0,
        kwargs=kwargs,
        name=name,
    )


class Database:
    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        loaders: Loaders,
        *,
        replica: AsyncConnectionPool[AsyncConnection[Any]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.replica = replica
        self.loaders = loaders
        self.metrics = metrics
        self._replica_down_until = 0.0  # monotonic time before which the replica is skipped

    async def load(self, entry: str) -> Loaded | None:
        """The entry as its loader computes it on the primary, or None when it does not exist."""
        async with self.pool.connection() as conn:
            loaded = await self.loaders.load(conn, entry)
        self._counted("primary")
        return loaded

    async def load_leased(self, entry: str, marker: int | None) -> Loaded | None:
        """A load whose result a lease may fill: on the replica when it has replayed up to
        `marker` (the LSN marker the lease came with), else on the primary."""
        if self.replica is None:
            return await self.load(entry)
        choice = replica.NO_MARKER
        if marker is not None and time.monotonic() < self._replica_down_until:
            choice = replica.REPLICA_ERROR
        elif marker is not None:
            try:
                async with self.replica.connection(timeout=REPLICA_CONNECT_WAIT_S) as conn:
                    cur = await conn.execute(REPLAY_LSN)
                    row = await cur.fetchone()
                    replayed = replica.parse_lsn(row[0]) if row and row[0] else None
                    choice = replica.choose(marker, replayed)
                    if choice.server == "replica":
                        loaded = await self.loaders.load(conn, entry)
                        self._counted("replica")
                        return loaded
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning(
                    "replica load of %s failed (%s): reading the primary, replica skipped for"
                    " %.1f s",
                    entry,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    REPLICA_RETRY_S,
                )
                self._replica_down_until = time.monotonic() + REPLICA_RETRY_S
                choice = replica.REPLICA_ERROR
        if self.metrics is not None:
            self.metrics.replica_fallbacks.labels(choice.reason).inc()
        return await self.load(entry)

    def _counted(self, server: replica.Server) -> None:
        if self.metrics is not None and self.replica is not None:
            self.metrics.loads_by_server.labels(server).inc()

    async def ping(self) -> None:
        async with self.pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")

    async def replay_lsn(self) -> str | None:
        """The replica's replay position (health): None when it is not replaying."""
        assert self.replica is not None
        async with self.replica.connection(timeout=2.0) as conn:
            cur = await conn.execute(REPLAY_LSN)
            row = await cur.fetchone()
        return None if row is None or row[0] is None else str(row[0])

    async def current_lsn(self) -> int:
        """The primary's WAL insert position: at or past the commit of every transaction that
        has committed (even with synchronous_commit off, unlike the write position)."""
        async with self.pool.connection(timeout=2.0) as conn:
            cur = await conn.execute("SELECT pg_current_wal_insert_lsn()::text")
            row = await cur.fetchone()
        if row is None or not row[0]:
            return replica.UNKNOWN_LSN
        return replica.parse_lsn(str(row[0]))
