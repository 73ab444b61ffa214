"""The replication connection: one START_REPLICATION session over psycopg 3's COPY_BOTH.

psycopg 3.3 runs START_REPLICATION on a `replication=database` connection and leaves the
connection in COPY_BOTH mode; reading the CopyData frames and writing standby status updates
is done here on its `pgconn` (libpq, non-blocking) with the event loop's reader callbacks: no
thread, no second driver. Frames (PostgreSQL docs, "Streaming Replication Protocol"):

    XLogData          'w' Int64 start, Int64 end, Int64 server clock, Byte* payload (pgoutput)
    keepalive         'k' Int64 server WAL end, Int64 server clock, Byte1 reply requested
    status update     'r' Int64 written, Int64 flushed, Int64 applied, Int64 clock, Byte1 reply
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass

import psycopg
from psycopg import pq, sql

from pgbust.pgoutput import PG_EPOCH_US

_XLOG = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")
_STATUS = struct.Struct(">cQQQqB")


@dataclass(frozen=True, slots=True)
class XLogData:
    start: int
    end: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    wal_end: int
    reply_requested: bool


Frame = XLogData | Keepalive


class ReplicationError(psycopg.OperationalError):
    """The stream ended or sent something that is not a replication frame."""


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _pg_now_us() -> int:
    return time.time_ns() // 1000 - PG_EPOCH_US


class ReplicationStream:
    """Frames of one slot, and status updates back. Single task: `read` and `send_status`
    are called from the same coroutine (they never wait on each other)."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        self.conn = conn
        self.pgconn = conn.pgconn
        self.backend_pid = conn.info.backend_pid

    @classmethod
    async def start(
        cls, database_url: str, application_name: str, slot: str, publication: str
    ) -> ReplicationStream:
        conn = await psycopg.AsyncConnection.connect(
            database_url,
            replication="database",
            autocommit=True,
            application_name=application_name,
            connect_timeout=5,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
        try:
            options = sql.SQL("proto_version '1', publication_names {}").format(
                sql.Literal(publication)
            )
            if conn.info.server_version >= 140000:
                options = sql.SQL("{}, messages 'true'").format(options)  # pgbust's own flushes
            # 0/0: from the slot's confirmed position (the server never goes back before it)
            await conn.execute(
                sql.SQL("START_REPLICATION SLOT {} LOGICAL 0/0 ({})").format(
                    sql.Identifier(slot), options
                )
            )
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    async def read(self, wait_s: float) -> list[Frame]:
        """Every frame already received; if none, wait up to `wait_s` for some ([] then)."""
        frames = self._drain()
        if frames:
            return frames
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self.pgconn.socket

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        # A plain future woken by the socket or a timer, not asyncio.wait_for: on Python 3.11
        # wait_for can swallow a cancellation that coincides with the wake-up (gh-86296), and
        # a source that misses its cancellation streams on, holding the slot.
        loop.add_reader(fd, wake)
        timer = loop.call_later(wait_s, wake)
        try:
            await ready
        finally:
            timer.cancel()
            loop.remove_reader(fd)
        self._consume()
        return self._drain()

    def send_status(self, written: int, flushed: int, *, reply: bool = False) -> None:
        """Tell the server how far we got; `flushed` is what the slot may forget."""
        message = _STATUS.pack(b"r", written, flushed, flushed, _pg_now_us(), int(reply))
        if self.pgconn.put_copy_data(message) != 1:
            raise ReplicationError(self.pgconn.get_error_message() or "cannot send status")
        # non-blocking: what does not go out now goes with the next flush
        if self.pgconn.flush() < 0:
            raise ReplicationError(self.pgconn.get_error_message() or "cannot send status")

    async def close(self) -> None:
        """Close the socket at once. Not psycopg's close(): on a connection inside COPY_BOTH it
        first cancels the "query" and waits up to 5 s for the server, which on a silent
        connection is 5 s of nothing. The walsender notices the closed socket by itself."""
        self.pgconn.finish()
        await self.conn.close()

    def _consume(self) -> None:
        try:
            self.pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise ReplicationError(f"replication connection lost: {exc}") from None

    def _drain(self) -> list[Frame]:
        frames: list[Frame] = []
        while True:
            nbytes, data = self.pgconn.get_copy_data(1)
            if nbytes == 0:
                return frames
            if nbytes < 0:
                self._ended()
            raw = bytes(data)
            kind = raw[:1]
            if kind == b"w":
                start, end, _ = _XLOG.unpack_from(raw, 1)
                frames.append(XLogData(start, end, raw[1 + _XLOG.size :]))
            elif kind == b"k":
                wal_end, _, reply = _KEEPALIVE.unpack_from(raw, 1)
                frames.append(Keepalive(wal_end, bool(reply)))
            else:
                raise ReplicationError(f"unexpected replication frame {kind!r}")

    def _ended(self) -> None:
        result = self.pgconn.get_result()
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            message = (result.error_message or b"").decode(errors="replace").strip()
            raise ReplicationError(f"replication stream ended: {message}")
        raise ReplicationError("replication stream ended by the server")
