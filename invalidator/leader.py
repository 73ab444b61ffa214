"""Exactly one active invalidator per lock id: a Postgres session advisory lock + a heartbeat.

The lock lives on a connection of its own. A standby polls pg_try_advisory_lock; when the
active process dies its session ends, the lock is free and a standby takes it within one poll.

A process that is paused (SIGSTOP) or hung keeps its session and so its lock. Therefore the
active one beats every `heartbeat_s` from its lock connection (pgbust.invalidator_heartbeat,
db/triggers/01); a standby that finds the lock holder silent for longer than
`takeover_after_s` terminates the holder's backends (lock and LISTEN connection) and takes the
lock. The silenced process, once it runs again, finds its lock connection gone and stops
serving: it goes back to standby.

Every statement on the lock connection has a deadline (`statement_timeout_s`): a connection
that went silent without closing is dropped instead of waited on forever. Its session may
live on in Postgres holding the lock (the server never heard the client go); it stops
beating, so it is taken over like a paused holder, by a standby or by this very process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import errors

from invalidator import pg
from invalidator.listener import APPLICATION_NAME as LISTENER_APPLICATION_NAME

log = logging.getLogger(__name__)
APPLICATION_NAME = "pgbust-invalidator-lock"

_BEAT = """
INSERT INTO pgbust.invalidator_heartbeat (lock_id, namespace, pid, listener_pid, beat_at)
VALUES (%(lock_id)s, %(namespace)s, pg_backend_pid(), %(listener_pid)s, clock_timestamp())
ON CONFLICT (lock_id) DO UPDATE
SET namespace = EXCLUDED.namespace, pid = EXCLUDED.pid,
    listener_pid = EXCLUDED.listener_pid, beat_at = EXCLUDED.beat_at
"""
# The beat and the capture probe in one round trip (invalidator/liveness.py): the NOTIFY is
# delivered to the LISTEN connection when this statement commits. In wal mode the probe is a
# non-transactional logical message instead, which the slot's consumer receives at once.
_PROBE = {
    False: "pg_notify(%(probe_channel)s, %(probe)s)",
    True: "pg_logical_emit_message(false, %(probe_channel)s, %(probe)s)",
}
_BEAT_AND_PROBE = {
    via_wal: f"WITH beat AS ({_BEAT.strip()} RETURNING 1) SELECT {probe} FROM beat"
    for via_wal, probe in _PROBE.items()
}

# The backend holding the lock, and how long it has been silent: the later of its last heartbeat
# and its session's last state change (it runs a statement at least every heartbeat, so this
# also covers a holder that has not written its first heartbeat yet). A silent holder, and its
# LISTEN backend, are terminated in the same statement.
_TAKE_OVER = """
WITH holder AS (
    SELECT l.pid, h.listener_pid,
           extract(epoch FROM clock_timestamp() - greatest(h.beat_at, a.state_change))
               AS silent_s
    FROM pg_locks l
    JOIN pg_stat_activity a ON a.pid = l.pid
    LEFT JOIN pgbust.invalidator_heartbeat h ON h.lock_id = %(lock_id)s AND h.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((l.classid::bigint << 32) | l.objid::bigint) = %(lock_id)s
      AND l.pid <> pg_backend_pid()
      AND a.application_name = %(lock_app)s
      AND a.state IS DISTINCT FROM 'active'
)
SELECT h.pid, h.silent_s::float8,
       pg_terminate_backend(h.pid),
       (SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
        WHERE a.pid = h.listener_pid AND a.application_name = %(listener_app)s)
FROM holder h
WHERE h.silent_s > %(after_s)s
"""


class Leadership:
    def __init__(
        self,
        database_url: str,
        lock_id: int,
        poll_s: float = 0.25,
        *,
        namespace: str = "",
        heartbeat_s: float = 0.5,
        takeover_after_s: float = 3.0,
        listener_pid: Callable[[], int | None] | None = None,
        statement_timeout_s: float = 1.5,
        probe_via_wal: bool = False,
    ) -> None:
        self.database_url = database_url
        self.probe_via_wal = probe_via_wal
        self.statement_timeout_s = statement_timeout_s
        self.lock_id = lock_id
        self.poll_s = poll_s
        self.namespace = namespace
        self.heartbeat_s = heartbeat_s
        self.takeover_after_s = takeover_after_s  # 0 = never take over from a live session
        self.listener_pid = listener_pid or (lambda: None)
        self.takeovers = 0  # silent holders this process terminated
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._no_table_logged = False

    async def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = await pg.connect(self.database_url, APPLICATION_NAME)
        return self._conn

    async def _bounded(
        self,
        conn: pg.Connection,
        query: str,
        params: Sequence[Any] | Mapping[str, Any] | None,
        what: str,
    ) -> list[tuple[object, ...]]:
        """Run one statement with the lock connection's deadline; its rows."""

        async def run() -> list[tuple[object, ...]]:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []

        return await pg.within(conn, run(), self.statement_timeout_s, what)

    async def _try_lock(self) -> bool:
        conn = await self._connection()
        rows = await self._bounded(
            conn, "SELECT pg_try_advisory_lock(%s)", (self.lock_id,), "pg_try_advisory_lock"
        )
        return bool(rows and rows[0][0])

    def _missing_table(self, exc: Exception) -> None:
        if not self._no_table_logged:
            log.warning(
                "no pgbust.invalidator_heartbeat table (%s): run `python -m db upgrade`; "
                "a paused invalidator cannot be taken over until then",
                str(exc).splitlines()[0],
            )
            self._no_table_logged = True

    async def _take_over_silent_holder(self) -> bool:
        """Terminate the lock holder when it has been silent too long; True if it was."""
        if self.takeover_after_s <= 0:
            return False
        conn = await self._connection()
        params = {
            "lock_id": self.lock_id,
            "after_s": self.takeover_after_s,
            "listener_app": LISTENER_APPLICATION_NAME,
            "lock_app": APPLICATION_NAME,
        }
        try:
            rows = await self._bounded(conn, _TAKE_OVER, params, "take-over check")
        except errors.UndefinedTable as exc:
            self._missing_table(exc)
            return False
        except errors.InsufficientPrivilege as exc:
            log.error("cannot terminate the silent invalidator: %s", str(exc).splitlines()[0])
            return False
        for pid, silent_s, terminated, listeners in rows:
            log.error(
                "the active invalidator (backend %s) has been silent for %.1f s "
                "(> PGBUST_TAKEOVER_AFTER_S %.1f): terminated=%s, its listener terminated=%s; "
                "taking over",
                pid,
                silent_s,
                self.takeover_after_s,
                terminated,
                listeners,
            )
        if rows:
            self.takeovers += 1
        return bool(rows)

    async def acquire(self, ready: Callable[[], Awaitable[bool]] | None = None) -> None:
        """Wait (as a hot standby) until this process holds the lock.

        `ready` is asked before every attempt: a standby that could not serve (it cannot reach
        Redis) neither takes the lock nor takes over a silent holder."""
        waiting_logged = False
        while True:
            if ready is not None and not await ready():
                await asyncio.sleep(self.poll_s)
                continue
            try:
                if await self._try_lock():
                    log.warning("acquired the invalidator lock %s: now active", self.lock_id)
                    await self.beat()
                    return
                if not waiting_logged:
                    log.warning("another invalidator is active: standing by")
                    waiting_logged = True
                if await self._take_over_silent_holder():
                    # its session ends within milliseconds: try again at a short interval
                    for _ in range(40):
                        if await self._try_lock():
                            log.warning("took over the invalidator lock %s", self.lock_id)
                            await self.beat()
                            return
                        await asyncio.sleep(0.025)
            except psycopg.OperationalError as exc:
                log.warning("lock connection failed (%s); retrying", exc)
                await self._close()
            await asyncio.sleep(self.poll_s)

    async def fetch(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run a read-only query on the lock connection (raises if that connection is gone)."""
        conn = self._conn
        if conn is None:
            raise psycopg.OperationalError("no lock connection")
        cur = await conn.execute(query, params)
        return await cur.fetchall()

    async def beat(self, probe: tuple[str, str] | None = None) -> None:
        """Record the heartbeat on the lock connection, with the capture probe `(channel,
        payload)` if given; raises psycopg.Error when that connection is gone or silent."""
        conn = self._conn
        if conn is None or conn.closed:
            raise psycopg.OperationalError("no lock connection")
        params = {
            "lock_id": self.lock_id,
            "namespace": self.namespace,
            "listener_pid": self.listener_pid(),
        }
        query = _BEAT
        if probe is not None:
            query = _BEAT_AND_PROBE[self.probe_via_wal]
            params.update(probe_channel=probe[0], probe=probe[1])
        try:
            await self._bounded(conn, query, params, "heartbeat")
        except errors.UndefinedTable as exc:
            self._missing_table(exc)
            query, args = "SELECT 1", None
            if probe is not None:
                query = "SELECT " + _PROBE[self.probe_via_wal]
                args = {"probe_channel": probe[0], "probe": probe[1]}
            await self._bounded(conn, query, args, "heartbeat")

    async def release(self) -> None:
        if self._conn is not None and not self._conn.closed:
            with contextlib.suppress(psycopg.Error):
                unlock = "SELECT pg_advisory_unlock(%s)"
                await self._bounded(self._conn, unlock, (self.lock_id,), "unlock")
        await self._close()

    async def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await self._conn.close()
            self._conn = None
