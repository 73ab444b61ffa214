"""Exactly one active invalidator per database: a Postgres session advisory lock.

The lock lives on a connection of its own. A standby polls pg_try_advisory_lock; when the
active process dies its session ends, the lock is free and a standby takes it within one poll.
If the active one loses its lock connection, it stops serving (someone else may take over).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

log = logging.getLogger(__name__)
APPLICATION_NAME = "pgbust-invalidator-lock"


class Leadership:
    def __init__(self, database_url: str, lock_id: int, poll_s: float = 0.25) -> None:
        self.database_url = database_url
        self.lock_id = lock_id
        self.poll_s = poll_s
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def _try_lock(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.database_url,
                autocommit=True,
                application_name=APPLICATION_NAME,
                connect_timeout=5,
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
            )
        cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_id,))
        row = await cur.fetchone()
        return bool(row and row[0])

    async def acquire(self) -> None:
        """Wait (as a hot standby) until this process holds the lock."""
        waiting_logged = False
        while True:
            try:
                if await self._try_lock():
                    log.warning("acquired the invalidator lock %s: now active", self.lock_id)
                    return
                if not waiting_logged:
                    log.warning("another invalidator is active: standing by")
                    waiting_logged = True
            except psycopg.OperationalError as exc:
                log.warning("lock connection failed (%s); retrying", exc)
                await self._close()
            await asyncio.sleep(self.poll_s)

    async def watch(self) -> None:
        """Return when the lock can no longer be trusted (its connection is gone)."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                assert self._conn is not None
                await self._conn.execute("SELECT 1")
            except (psycopg.Error, AssertionError) as exc:
                log.error("lost the invalidator lock connection (%s): stop serving", exc)
                await self._close()
                return

    async def release(self) -> None:
        if self._conn is not None and not self._conn.closed:
            with contextlib.suppress(psycopg.Error):
                await self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.lock_id,))
        await self._close()

    async def _close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
