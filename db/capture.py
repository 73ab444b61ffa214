"""Install, remove and inspect the change-capture triggers (the SQL lives in db/triggers/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from db import migrate

CAPTURE_TRIGGERS = 4  # insert, update, delete, truncate


@dataclass(frozen=True)
class CaptureStatus:
    relation: str
    key_columns: list[str]
    max_rows: int
    channel: str
    triggers: int

    @property
    def installed(self) -> bool:
        return self.triggers == CAPTURE_TRIGGERS


def install(conn: psycopg.Connection[Any]) -> list[str]:
    """(Re)apply every db/triggers/*.sql file: declarations and their triggers."""
    return migrate.install_triggers(conn)


def _has_catalogue(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('pgbust.capture') IS NOT NULL").fetchone()
    return bool(row and row[0])


def remove(conn: psycopg.Connection[Any]) -> list[str]:
    """Drop the capture triggers of every declared table; the declarations stay."""
    if not _has_catalogue(conn):
        return []
    removed: list[str] = []
    with conn.transaction():
        rows = conn.execute(
            "SELECT relation FROM pgbust.capture WHERE to_regclass(relation) IS NOT NULL"
        ).fetchall()
        for (relation,) in rows:
            conn.execute("SELECT pgbust.uncapture_table(%s::regclass)", (relation,))
            removed.append(relation)
    return removed


def status(conn: psycopg.Connection[Any]) -> list[CaptureStatus]:
    if not _has_catalogue(conn):
        return []
    rows = conn.execute(
        "SELECT relation, key_columns, max_rows, channel, triggers FROM pgbust.capture_status"
    ).fetchall()
    return [CaptureStatus(r[0], list(r[1]), r[2], r[3], r[4]) for r in rows]
