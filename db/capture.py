"""Install, remove and inspect the change-capture triggers (the SQL lives in db/triggers/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from db import declared, migrate
from pgbust import declaration as declarations
from pgbust.declaration import Declaration

STATUS_QUERY = """
SELECT relation, key_columns, max_rows, channel, triggers, active, members, captured,
       problems, ddl_problem, depends_columns, watched_columns
FROM pgbust.capture_status
"""


@dataclass(frozen=True)
class CaptureStatus:
    """One declared table as pgbust.capture_status sees it (db/triggers/10_capture.sql)."""

    relation: str
    key_columns: list[str]
    max_rows: int
    channel: str
    triggers: int  # capture triggers in place and firing as they must, over all members
    active: bool  # False after `python -m db triggers remove`
    members: int  # the table, its partitions and inheritance children
    captured: bool  # every committed change of the table is announced
    problems: list[str]  # why not, one line per member
    ddl_problem: str | None  # the DDL event triggers are not in place
    depends_columns: list[str] = field(default_factory=list)
    watched_columns: list[str] = field(default_factory=list)

    @property
    def installed(self) -> bool:
        return self.captured

    def describe(self) -> str:
        """One line for `python -m db triggers status`."""
        tables = "1 table" if self.members == 1 else f"{self.members} tables (with partitions)"
        head = (
            f"{self.relation}: keys {','.join(self.key_columns)}; "
            + (f"depends {','.join(self.depends_columns)}; " if self.depends_columns else "")
            + (f"watched {','.join(self.watched_columns)}; " if self.watched_columns else "")
            + f"max_rows {self.max_rows}; "
            f"channel {self.channel}; {tables}; "
        )
        if self.captured:
            return head + "captured"
        return head + "NOT captured: " + "; ".join(self.problems)


def install(conn: psycopg.Connection[Any], declaration: Declaration | None = None) -> list[str]:
    """(Re)apply every db/triggers/*.sql file, then capture every table the declaration file
    declares (default PGBUST_CONFIG, ./pgbust.toml) and stop capturing the others."""
    declaration = declaration or declarations.load()
    files = migrate.install_triggers(conn)
    declared.capture(conn, declaration)
    return files


def _has_catalogue(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('pgbust.capture') IS NOT NULL").fetchone()
    return bool(row and row[0])


def remove(conn: psycopg.Connection[Any]) -> list[str]:
    """Drop the capture triggers of every declared table; the declarations stay, inactive
    (reported as not captured until `install`)."""
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
    return [
        CaptureStatus(
            relation=r[0],
            key_columns=list(r[1]),
            max_rows=r[2],
            channel=r[3],
            triggers=r[4],
            active=r[5],
            members=r[6],
            captured=r[7],
            problems=list(r[8]),
            ddl_problem=r[9],
            depends_columns=list(r[10]),
            watched_columns=list(r[11]),
        )
        for r in conn.execute(STATUS_QUERY).fetchall()
    ]


def ddl_problem(rows: list[CaptureStatus]) -> str | None:
    """The one database-wide DDL problem, if any (every row carries the same)."""
    return next((r.ddl_problem for r in rows if r.ddl_problem), None)
