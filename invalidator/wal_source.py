"""The WAL capture source (PGBUST_CAPTURE=wal): a logical replication slot read with pgoutput,
decoded into the same Changes as the NOTIFY path, delivered at least once.

    source = WalSource(url, slot, publication, declaration, queue, metrics)
    task = asyncio.create_task(source.run())     # puts WalBatch | FlushRequest into `queue`
    ...apply a batch to Redis...
    await source.confirm(batch.end_lsn)          # only now may the slot forget it

- One WalBatch per committed transaction (never split): its Changes and its end LSN. The slot
  is confirmed only up to what the caller confirmed, so a crash, a kill or a lost connection
  before `confirm` delivers the same transactions again from the slot: nothing is missed, and
  nothing needs a flush when the slot was there all along.
- A slot that is missing (dropped) or lost (invalidated past max_slot_wal_keep_size) is
  created anew, logged loudly and followed by a FlushRequest (epoch bump): what was committed
  in between is gone from the WAL stream.
- Silence is not news: standby status updates go out every `status_interval_s`; after
  `keepalive_s` without a frame the source asks the server to reply, and a connection silent
  for `timeout_s` is treated as lost (closed, reconnected, resumed from the slot).
- `backend_pid` (the walsender's pid, in the heartbeat row) and `connected` match Listener's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

import psycopg

from db import wal
from invalidator import pg
from invalidator.listener import APPLICATION_NAME, FlushRequest
from invalidator.liveness import CaptureProof, Probe
from invalidator.metrics import Metrics
from invalidator.replication import (
    Keepalive,
    ReplicationStream,
    lsn_text,
    parse_lsn,
)
from invalidator.visibility import Snapshot, invisible
from pgbust import pgoutput
from pgbust.declaration import Declaration
from pgbust.rules import Change
from pgbust.wal_changes import Transaction, Transactions

log = logging.getLogger(__name__)
ADMIN_APPLICATION_NAME = "pgbust-invalidator-slot"
VISIBILITY_APPLICATION_NAME = "pgbust-invalidator-visibility"
_VISIBILITY_WARN_S = 1.0  # a commit this long in the WAL but not visible is worth a warning
_VISIBILITY_GIVE_UP_S = 30.0  # no answer from Postgres this long: invalidate everything


@dataclass(frozen=True, slots=True)
class WalBatch:
    """One committed transaction: confirm `end_lsn` once its changes are applied."""

    changes: tuple[Change, ...]
    end_lsn: int
    commit_ts_us: int
    problems: tuple[str, ...] = ()
    xid: int | None = None  # applied only once visible to readers (invalidator/visibility.py)


WalItem = WalBatch | FlushRequest | Probe


class SilentConnection(Exception):
    """The replication connection proved nothing for longer than the deadline."""


class WalSource:
    def __init__(
        self,
        database_url: str,
        slot: str,
        publication: str,
        declaration: Declaration,
        queue: asyncio.Queue[WalItem],
        metrics: Metrics,
        *,
        status_interval_s: float = 1.0,
        keepalive_s: float = 1.0,
        timeout_s: float = 5.0,
        slot_check_s: float = 5.0,
        retry_max_s: float = 2.0,
        probe_prefix: str | None = None,
        proof: CaptureProof | None = None,
    ) -> None:
        self.database_url = database_url
        self.slot = slot
        self.publication = publication
        self.declaration = declaration
        self.queue = queue
        self.metrics = metrics
        self.status_interval_s = status_interval_s
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_s
        self.slot_check_s = slot_check_s
        self.retry_max_s = retry_max_s
        # the capture probes (invalidator/liveness.py) come as logical messages with this prefix
        self.probe_prefix = probe_prefix
        self.proof = proof
        self.connected = False
        self.connections = 0
        self.backend_pid: int | None = None
        self.slot_existed: bool | None = None  # at the first connection: no flush needed
        self.confirmed_lsn = 0  # what the server is told it may forget
        self.received_lsn = 0  # end of the last transaction delivered
        self._unconfirmed: deque[tuple[int, int]] = deque()  # (end LSN, commit µs) delivered
        self._stream: ReplicationStream | None = None
        self._visibility: pg.Connection | None = None  # wait_visible's session
        self._last_pid: int | None = None  # walsender of the previous session
        metrics.wal_lag_seconds.set_function(self._lag_s)

    # --- the caller's side ------------------------------------------------------------------

    async def confirm(self, lsn: int) -> None:
        """Everything delivered up to `lsn` (a WalBatch's end_lsn) has been applied."""
        if lsn > self.confirmed_lsn:
            self.confirmed_lsn = lsn
        while self._unconfirmed and self._unconfirmed[0][0] <= lsn:
            self._unconfirmed.popleft()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(psycopg.Error):  # the read loop notices a broken stream
                stream.send_status(self.received_lsn, self.confirmed_lsn)

    async def wait_visible(self, xids: Collection[int]) -> bool:
        """Return once every one of these committed transactions is visible to a reader that
        starts now (invalidator/visibility.py says why an invalidation must not come sooner).
        False when Postgres does not answer for _VISIBILITY_GIVE_UP_S: the caller must then
        invalidate everything."""
        started = time.monotonic()
        pause_s, warned, failures = 0.0005, False, 0
        while xids:
            try:
                snapshot = await self._snapshot()
            except (psycopg.Error, OSError, ValueError) as exc:
                # Postgres restarting, or this session lost: ask again (a reader cannot read an
                # older row from a server that is down either; readers stop trusting the caches
                # once the capture proof is late). Only when it stays unknown: False.
                first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                failures += 1
                if time.monotonic() - started >= _VISIBILITY_GIVE_UP_S:
                    log.error("cannot tell whether committed changes are visible (%s)", first)
                    return False
                if failures == 1:
                    log.warning("visibility check failed (%s); asking again", first)
                await self.close()
                await asyncio.sleep(min(0.05 * 2**failures, 1.0))
                continue
            waiting = invisible(xids, snapshot)
            if not waiting:
                break
            waited_s = time.monotonic() - started
            if waited_s >= _VISIBILITY_WARN_S and not warned:
                warned = True
                log.warning(
                    "transactions %s are committed in the WAL but not visible after %.1f s "
                    "(a synchronous standby that does not answer?): their invalidation waits",
                    sorted(waiting)[:5],
                    waited_s,
                )
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 0.01)
        return True

    async def _snapshot(self) -> Snapshot:
        conn = self._visibility
        if conn is None or conn.closed:
            conn = self._visibility = await pg.connect(
                self.database_url, VISIBILITY_APPLICATION_NAME
            )

        async def current() -> Snapshot:
            cur = await conn.execute(wal.query("current_snapshot"))
            row = await cur.fetchone()
            return Snapshot.parse(str(row[0]) if row else "")

        return await pg.within(conn, current(), self.timeout_s, "visibility check")

    async def close(self) -> None:
        """Close the sessions that outlive a replication session (at the end of a term)."""
        conn, self._visibility = self._visibility, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    def _lag_s(self) -> float:
        if not self._unconfirmed:
            return 0.0
        return max(0.0, time.time() - self._unconfirmed[0][1] / 1e6)

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Stream forever (until cancelled), reconnecting and resuming from the slot."""
        failures = 0
        while True:
            sessions = self.connections
            try:
                await self._prepare_slot()
                await self._session()
            except (psycopg.Error, SilentConnection, OSError, wal.WalCaptureError) as exc:
                first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                in_use = isinstance(exc, psycopg.errors.ObjectInUse)
                (log.info if in_use else log.warning)(
                    "replication from slot %s stopped (%s); resuming from the slot",
                    self.slot,
                    first,
                )
                self.metrics.reconnects.labels("postgres").inc()
                # the back-off grows with failures in a row: a session that streamed (a
                # connection that worked until it was terminated) starts the count again
                failures = 1 if self.connections > sessions else failures + 1
            finally:
                self.connected = False
                self.backend_pid = None
                if self.proof is not None:
                    self.proof.not_listening()  # no probe can come back on a closed stream
                stream, self._stream = self._stream, None
                if stream is not None:
                    await stream.close()
            await asyncio.sleep(min(self.retry_max_s, 0.05 * 2 ** min(failures, 10)))
            if failures > 20:
                failures = 20

    def _flush(self, kind: str, reason: str) -> None:
        log.error("%s: bumping the epoch, every cached entry is invalidated", reason)
        self.queue.put_nowait(FlushRequest(kind, reason))

    async def _prepare_slot(self) -> None:
        """The slot is there and usable; if it had to be (re)created, flush."""
        conn = await pg.connect(self.database_url, ADMIN_APPLICATION_NAME)
        async with conn:
            # bounded, closed rather than cancelled when silent (see _check_slot_forever)
            status = await pg.within(
                conn, self._inspect_slot(conn), self.timeout_s, "slot preparation"
            )
        first = self.slot_existed is None
        if first:
            self.slot_existed = status is not None and not status.lost
        if status is not None and not status.lost:
            if first:
                log.warning(
                    "slot %s exists (confirmed up to %s): resuming, no flush",
                    self.slot,
                    status.confirmed_flush_lsn,
                )
            return
        await asyncio.to_thread(self._recreate_slot, status is not None)
        if status is None:
            self._flush(
                "slot_created" if first else "slot_dropped",
                f"replication slot {self.slot} did not exist and was created: changes "
                "committed before it were not captured",
            )
        else:
            self._flush(
                "slot_lost",
                f"replication slot {self.slot} was invalidated (wal_status lost: it fell "
                "behind max_slot_wal_keep_size) and was created anew",
            )

    async def _inspect_slot(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]]
    ) -> wal.SlotStatus | None:
        """The slot's status; our own stale walsender ended; the publication is there."""
        status = await self._slot_status(conn)
        stale = self._last_pid
        if status is not None and status.active_pid is not None and status.active_pid == stale:
            log.warning("ending our own stale walsender (pid %s) that still holds the slot", stale)
            await conn.execute(wal.query("end_stale_walsender"), {"slot": self.slot, "pid": stale})
        cur = await conn.execute(wal.query("publication_exists"), {"publication": self.publication})
        row = await cur.fetchone()
        if not (row and row[0]):
            raise wal.WalCaptureError(
                f"publication {self.publication} does not exist: run `python -m db upgrade` "
                "with PGBUST_CAPTURE=wal"
            )
        return status

    def _recreate_slot(self, drop_first: bool) -> None:
        with psycopg.connect(
            self.database_url, autocommit=True, application_name=ADMIN_APPLICATION_NAME
        ) as conn:
            if drop_first:
                wal.drop_slot(conn, self.slot)
            wal.create_slot(conn, self.slot)

    async def _slot_status(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]]
    ) -> wal.SlotStatus | None:
        cur = await conn.execute(wal.query("slot"), {"slot": self.slot})
        row = await cur.fetchone()
        status = None if row is None else wal.SlotStatus(*row)  # type: ignore[arg-type]
        if status is not None:
            self.metrics.wal_slot_lag_bytes.set(status.lag_bytes or 0)
            safe = status.safe_wal_size
            self.metrics.wal_safe_wal_size_bytes.set(-1 if safe is None else safe)
        return status

    async def _session(self) -> None:
        stream = await ReplicationStream.start(
            self.database_url, APPLICATION_NAME, self.slot, self.publication
        )
        self._stream = stream
        # what an earlier session delivered and nobody confirmed comes again from the slot
        self._unconfirmed.clear()
        self.connections += 1
        if self.proof is not None:
            # the capture channel is this stream from now on: probes are expected on it (as
            # on a new LISTEN connection), and the term's liveness judges it by them
            self.proof.listening()
        self.connected = True
        self.backend_pid = self._last_pid = stream.backend_pid
        log.info("streaming slot %s (publication %s)", self.slot, self.publication)
        checker = asyncio.create_task(self._check_slot_forever(), name="wal-slot-check")
        try:
            await self._read(stream, Transactions(self.declaration))
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await checker

    async def _check_slot_forever(self) -> None:
        """Slot lag and safe_wal_size as metrics, from a plain session (best effort)."""
        while True:
            try:
                conn = await pg.connect(self.database_url, ADMIN_APPLICATION_NAME)
                async with conn:
                    while True:
                        # bounded, and closed rather than cancelled (pg.within): a query
                        # cancelled on a silent connection waits 5 s more in psycopg, and the
                        # session that owns this check waits for it to end
                        await pg.within(
                            conn, self._slot_status(conn), self.timeout_s, "slot status"
                        )
                        await asyncio.sleep(self.slot_check_s)
            except (psycopg.Error, pg.ConnectionSilent) as exc:
                log.debug("slot check failed: %s", exc)
                await asyncio.sleep(self.slot_check_s)

    async def _read(self, stream: ReplicationStream, transactions: Transactions) -> None:
        now = time.monotonic()
        last_frame = last_status = last_probe = now
        while True:
            due = min(last_status + self.status_interval_s, last_frame + self.timeout_s)
            if now - last_frame >= self.keepalive_s:
                due = min(due, last_probe + self.keepalive_s)
            frames = await stream.read(max(0.001, due - now))
            now = time.monotonic()
            if frames:
                last_frame = now
            for frame in frames:
                if isinstance(frame, Keepalive):
                    self._keepalive(frame, transactions)
                    if frame.reply_requested:
                        stream.send_status(self.received_lsn, self.confirmed_lsn)
                        last_status = now
                else:
                    self._message(frame.payload, transactions)
            silent = now - last_frame
            if silent >= self.timeout_s:
                raise SilentConnection(
                    f"the replication connection was silent for {silent:.1f} s"
                    f" (PGBUST_WAL_TIMEOUT_S {self.timeout_s})"
                )
            if silent >= self.keepalive_s and now - last_probe >= self.keepalive_s:
                stream.send_status(self.received_lsn, self.confirmed_lsn, reply=True)
                last_probe = last_status = now
            elif now - last_status >= self.status_interval_s:
                stream.send_status(self.received_lsn, self.confirmed_lsn)
                last_status = now

    def _keepalive(self, frame: Keepalive, transactions: Transactions) -> None:
        # Caught up, nothing delivered waits for its confirmation, no transaction half read:
        # the slot may move to the server's position (WAL of unpublished tables is not kept).
        if not self._unconfirmed and not transactions.in_transaction:
            if frame.wal_end > self.confirmed_lsn:
                self.confirmed_lsn = frame.wal_end
            self.received_lsn = max(self.received_lsn, frame.wal_end)

    def _message(self, payload: bytes, transactions: Transactions) -> None:
        try:
            message = pgoutput.decode(payload)
        except pgoutput.DecodeError as exc:
            log.error("undecodable pgoutput message (%s): invalidating everything", exc)
            transactions.malformed("undecodable_message")
            return
        if (
            isinstance(message, pgoutput.Message)
            and self.proof is not None
            and message.prefix == self.probe_prefix
        ):
            probe = self.proof.arrived(message.content.decode(errors="replace"))
            if probe is not None:
                self.queue.put_nowait(probe)
            return
        done = transactions.feed(message)
        if done is not None:
            self._deliver(done)

    def _deliver(self, tx: Transaction) -> None:
        self.metrics.wal_transactions.inc()
        for problem in tx.problems:
            self.metrics.malformed.labels(problem).inc()
        self.received_lsn = max(self.received_lsn, tx.end_lsn)
        if not tx.changes:
            if not self._unconfirmed and tx.end_lsn > self.confirmed_lsn:
                self.confirmed_lsn = tx.end_lsn  # nothing to apply
            return
        self._unconfirmed.append((tx.end_lsn, tx.commit_ts_us))
        self.queue.put_nowait(
            WalBatch(tx.changes, tx.end_lsn, tx.commit_ts_us, tx.problems, tx.xid)
        )


__all__ = ["SilentConnection", "WalBatch", "WalItem", "WalSource", "lsn_text", "parse_lsn"]
