"""The invalidator's Postgres sessions: autocommit, named (a standby finds them by name in
pg_stat_activity) and with TCP keepalives, so a vanished peer is noticed in seconds; and every
statement with a deadline of its own (`within`), because keepalives never notice a peer that
went silent behind a proxy or NAT that still ACKs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

import psycopg

T = TypeVar("T")
Connection = psycopg.AsyncConnection[tuple[object, ...]]


class ConnectionSilent(psycopg.OperationalError):
    """A statement got no answer within its deadline; its connection has been closed."""


_closing: set[asyncio.Task[None]] = set()


async def connect(database_url: str, application_name: str) -> Connection:
    """A new session. Cancelled half-way (a term ending while its listener reconnects), the
    attempt still finishes in the background and its connection is closed at once, instead of
    lingering, named like ours, until the garbage collector finds it."""
    attempt = asyncio.ensure_future(
        psycopg.AsyncConnection.connect(
            database_url,
            autocommit=True,
            application_name=application_name,
            connect_timeout=5,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
    )
    try:
        return await asyncio.shield(attempt)
    except asyncio.CancelledError:
        attempt.add_done_callback(_close_late)
        raise


def _close_late(attempt: asyncio.Future[Connection]) -> None:
    if attempt.cancelled() or attempt.exception() is not None:
        return
    closing = asyncio.ensure_future(attempt.result().close())
    _closing.add(closing)
    closing.add_done_callback(_closing.discard)


async def within(conn: Connection, operation: Awaitable[T], timeout_s: float, what: str) -> T:
    """Run `operation` on `conn`; past `timeout_s`, close `conn` and raise ConnectionSilent.

    Closing, not cancelling: a cancelled psycopg statement first sends a cancel request and
    then waits up to 5 s more for the server (psycopg's own bound), which on a silent
    connection is 5 s of nothing. Closing the socket ends the waiting statement at once.
    """
    task = asyncio.ensure_future(operation)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        await conn.close()
        task.cancel()
        raise
    if task in done:
        return task.result()
    await conn.close()
    await asyncio.wait({task}, timeout=1.0)  # it fails within milliseconds once closed
    if task.done():
        with contextlib.suppress(asyncio.CancelledError):
            task.exception()  # retrieved: not logged as "never retrieved"
    else:
        task.cancel()
    raise ConnectionSilent(f"{what}: no answer within {timeout_s:g} s; connection dropped")
