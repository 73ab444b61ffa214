"""WAL capture's database side: the publication generated from the declaration, the tables'
replica identity, the logical replication slot (the SQL lives in db/wal.sql)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import psycopg

from db.queries import parse_queries
from pgbust.errors import ConfigError

WAL_SQL = Path(__file__).with_name("wal.sql")
PLUGIN = "pgoutput"
log = logging.getLogger(__name__)


class WalCaptureError(ConfigError):
    """The server cannot do WAL capture as configured; the message says what to change."""


@cache
def _queries() -> dict[str, str]:
    return parse_queries(WAL_SQL.read_text())


def query(name: str) -> bytes:
    return _queries()[name].encode()


@dataclass(frozen=True)
class SlotStatus:
    slot: str
    plugin: str
    database: str
    active: bool
    active_pid: int | None
    confirmed_flush_lsn: str | None
    lag_bytes: int | None
    wal_status: str | None  # reserved | extended | unreserved | lost
    safe_wal_size: int | None  # None: max_slot_wal_keep_size = -1 (unlimited)

    @property
    def lost(self) -> bool:
        return self.wal_status == "lost"


@dataclass(frozen=True)
class ServerSettings:
    wal_level: str
    max_slot_wal_keep_size: str
    max_slot_wal_keep_size_mb: int
    wal_sender_timeout: str

    def warnings(self) -> list[str]:
        if self.max_slot_wal_keep_size_mb < 0:
            return [
                "max_slot_wal_keep_size is unlimited (-1): a slot whose consumer stops keeps "
                "every WAL segment from then on and can fill the disk; set it (for example "
                "max_slot_wal_keep_size = '10GB') so Postgres invalidates the slot instead "
                "(the invalidator then recreates it and flushes the cache)"
            ]
        return []


@dataclass(frozen=True)
class Setup:
    publication: str
    slot: str
    created_slot: bool
    identity_changed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def server_settings(conn: psycopg.Connection[Any]) -> ServerSettings:
    row = conn.execute(query("settings")).fetchone()
    assert row is not None
    return ServerSettings(str(row[0]), str(row[1]), int(row[2]), str(row[3]))


def require_logical(conn: psycopg.Connection[Any]) -> ServerSettings:
    settings = server_settings(conn)
    if settings.wal_level != "logical":
        raise WalCaptureError(
            f"PGBUST_CAPTURE=wal needs wal_level = logical, the server has {settings.wal_level}: "
            "set it in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart "
            "Postgres, or use PGBUST_CAPTURE=notify"
        )
    return settings


def install(conn: psycopg.Connection[Any]) -> None:
    """(Re)create the functions of db/wal.sql; idempotent."""
    with conn.transaction():
        conn.execute(query("install"))


def publish(conn: psycopg.Connection[Any], publication: str, tables: Iterable[str]) -> list[str]:
    """The publication holds exactly these tables; returns those whose identity was set."""
    row = conn.execute(
        query("publish"), {"publication": publication, "tables": list(tables)}
    ).fetchone()
    return list(row[0]) if row and row[0] else []


def slot_status(conn: psycopg.Connection[Any], slot: str) -> SlotStatus | None:
    row = conn.execute(query("slot"), {"slot": slot}).fetchone()
    return None if row is None else SlotStatus(*row)


def create_slot(conn: psycopg.Connection[Any], slot: str) -> bool:
    """Create the slot unless it exists; True when it was created now. `conn` must be in
    autocommit mode (a slot cannot be created in a transaction that wrote)."""
    if slot_status(conn, slot) is not None:
        return False
    try:
        conn.execute(query("create_slot"), {"slot": slot})
    except psycopg.errors.DuplicateObject:
        return False  # created by someone else meanwhile
    return True


def drop_slot(conn: psycopg.Connection[Any], slot: str) -> bool:
    """Drop the slot (ending the walsender that uses it first); True if there was one."""
    if slot_status(conn, slot) is None:
        return False
    conn.execute(query("drop_slot"), {"slot": slot})
    for _ in range(50):
        try:
            conn.execute(query("drop_slot_now"), {"slot": slot})
            return True
        except psycopg.errors.ObjectInUse:
            conn.execute("SELECT pg_sleep(0.1)")  # the terminated walsender is still exiting
    conn.execute(query("drop_slot_now"), {"slot": slot})
    return True


def ensure(
    conn: psycopg.Connection[Any], publication: str, slot: str, tables: Iterable[str]
) -> Setup:
    """Publication, replica identity and slot in place (idempotent); `conn` in autocommit."""
    settings = require_logical(conn)
    install(conn)
    with conn.transaction():
        changed = publish(conn, publication, tables)
    for relation in changed:
        log.info("replica identity of %s set to FULL", relation)
    created = create_slot(conn, slot)
    return Setup(publication, slot, created, changed, settings.warnings())


def remove(conn: psycopg.Connection[Any], publication: str, slot: str) -> tuple[bool, bool]:
    """Drop the slot and the publication; (slot dropped, publication dropped). The tables'
    replica identity stays (it only adds WAL while wal_level = logical)."""
    dropped_slot = drop_slot(conn, slot)
    install(conn)
    row = conn.execute(query("drop_publication"), {"publication": publication}).fetchone()
    return dropped_slot, bool(row and row[0])


def published_tables(conn: psycopg.Connection[Any], publication: str) -> list[str]:
    rows = conn.execute(query("published_tables"), {"publication": publication}).fetchall()
    return [str(r[0]) for r in rows]


def tables_without_full_identity(
    conn: psycopg.Connection[Any], tables: Iterable[str]
) -> list[tuple[str, str]]:
    rows = conn.execute(query("replica_identities"), {"tables": list(tables)}).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]
