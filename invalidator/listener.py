"""The Postgres side: a psycopg 3 LISTEN loop that survives, and proves itself alive.

On every (re)connect it LISTENs first and only then asks for a flush (epoch bump): whatever
was notified while no connection listened is lost (NOTIFY is not durable), so everything
older is treated as invalidated. Received payloads go, unparsed, into the daemon's queue.

It also LISTENs on the probe channel (invalidator/liveness.py): a probe sent from the lock
connection that has not come back within the deadline means this connection is silent — a
connection that closes nothing and delivers nothing — so it is dropped like a broken one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from invalidator import pg
from invalidator.liveness import CaptureProof, Probe
from invalidator.metrics import Metrics

log = logging.getLogger(__name__)
APPLICATION_NAME = "pgbust-invalidator-listener"
_TICK_S = 0.1  # how often a quiet connection's probes are checked


@dataclass(frozen=True, slots=True)
class FlushRequest:
    kind: str  # low-cardinality label: start, reconnect, ...
    reason: str


Item = str | FlushRequest | Probe


class Listener:
    def __init__(
        self,
        database_url: str,
        channel: str,
        queue: asyncio.Queue[Item],
        metrics: Metrics,
        *,
        probe_channel: str,
        proof: CaptureProof,
        retry_max_s: float = 2.0,
    ) -> None:
        self.database_url = database_url
        self.channel = channel
        self.probe_channel = probe_channel
        self.proof = proof
        self.queue = queue
        self.metrics = metrics
        self.retry_max_s = retry_max_s
        self.connected = False
        self.connections = 0
        self.backend_pid: int | None = None  # of the LISTEN session (in the heartbeat row)

    async def _connect(self) -> pg.Connection:
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
                listen = sql.SQL("LISTEN {}; LISTEN {}").format(
                    sql.Identifier(self.channel), sql.Identifier(self.probe_channel)
                )
                await pg.within(conn, conn.execute(listen), self.proof.timeout_s, "LISTEN")
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
                self.proof.listening()
                self.connected = True
                self.backend_pid = conn.info.backend_pid
                await self._receive(conn)
            except psycopg.OperationalError as exc:
                first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                log.warning("lost the listener connection (%s); reconnecting", first)
                self.metrics.reconnects.labels("postgres").inc()
                if isinstance(exc, pg.ConnectionSilent):
                    self.metrics.silences.labels("listen").inc()
            finally:
                self.connected = False
                self.backend_pid = None
                self.proof.not_listening()
                await conn.close()

    async def _receive(self, conn: pg.Connection) -> None:
        """Queue what arrives; raise ConnectionSilent once a probe is overdue."""
        while True:
            async for notify in conn.notifies(timeout=_TICK_S):
                if notify.channel == self.probe_channel:
                    probe = self.proof.arrived(notify.payload)
                    if probe is not None:
                        self.queue.put_nowait(probe)
                else:
                    self.queue.put_nowait(notify.payload)
            late = self.proof.overdue_s()
            if late is not None:
                await conn.close()
                raise pg.ConnectionSilent(
                    f"a probe NOTIFY sent {late:.1f} s ago never came back "
                    f"(PGBUST_CAPTURE_TIMEOUT_S={self.proof.timeout_s:g}): the LISTEN "
                    "connection is silent"
                )
