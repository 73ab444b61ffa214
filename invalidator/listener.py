"""The Postgres side: a psycopg 3 LISTEN loop that survives.

On every (re)connect it LISTENs first and only then asks for a flush (epoch bump): whatever
was notified while no connection listened is lost (NOTIFY is not durable), so everything
older is treated as invalidated. Received payloads go, unparsed, into the daemon's queue.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from invalidator import pg
from invalidator.metrics import Metrics

log = logging.getLogger(__name__)
APPLICATION_NAME = "pgbust-invalidator-listener"


@dataclass(frozen=True, slots=True)
class FlushRequest:
    kind: str  # low-cardinality label: start, reconnect, ...
    reason: str


Item = str | FlushRequest


class Listener:
    def __init__(
        self,
        database_url: str,
        channel: str,
        queue: asyncio.Queue[Item],
        metrics: Metrics,
        *,
        retry_max_s: float = 2.0,
    ) -> None:
        self.database_url = database_url
        self.channel = channel
        self.queue = queue
        self.metrics = metrics
        self.retry_max_s = retry_max_s
        self.connected = False
        self.connections = 0
        self.backend_pid: int | None = None  # of the LISTEN session (in the heartbeat row)

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(psycopg.OperationalError),
            wait=wait_exponential(multiplier=0.05, max=self.retry_max_s),
            before_sleep=lambda state: log.warning(
                "cannot connect to postgres (%s); retrying",
                state.outcome.exception() if state.outcome else "?",
            ),
            reraise=True,
        ):
            with attempt:
                return await pg.connect(self.database_url, APPLICATION_NAME)
        raise AssertionError("unreachable")  # pragma: no cover

    async def run(self) -> None:
        """Listen forever (until cancelled), reconnecting whenever the connection is lost."""
        while True:
            conn = await self._connect()
            try:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                self.connections += 1
                kind = "start" if self.connections == 1 else "reconnect"
                log.warning(
                    "listening on %s (%s); bumping the epoch: changes made while no one "
                    "listened were not seen",
                    self.channel,
                    kind,
                )
                self.queue.put_nowait(
                    FlushRequest(kind, f"listener {kind}: notifications may have been missed")
                )
                self.connected = True
                self.backend_pid = conn.info.backend_pid
                async for notify in conn.notifies():
                    self.queue.put_nowait(notify.payload)
            except psycopg.OperationalError as exc:
                first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                log.warning("lost the listener connection (%s); reconnecting", first)
                self.metrics.reconnects.labels("postgres").inc()
            finally:
                self.connected = False
                self.backend_pid = None
                await conn.close()
