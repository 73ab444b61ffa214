"""NOTIFY capture from the declaration file: every declared table gets its triggers
(pgbust.capture_table, db/triggers/10_capture.sql) with its key, depends and watched columns;
a table no longer declared loses them. The SQL lives in db/declared.sql."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psycopg

from db.queries import parse_queries
from pgbust.declaration import Declaration, DeclarationError, Table

DECLARED_SQL = Path(__file__).with_name("declared.sql")


@cache
def _queries() -> dict[str, str]:
    return parse_queries(DECLARED_SQL.read_text())


def _query(name: str) -> bytes:
    return _queries()[name].encode()


@dataclass(frozen=True)
class Captured:
    tables: list[str]  # declared and captured now
    forgotten: list[str]  # no longer declared: triggers and row removed


def _columns(table: Table) -> list[str]:
    return list(dict.fromkeys([*table.key, *table.depends, *table.watched]))


def check(conn: psycopg.Connection[Any], declaration: Declaration) -> None:
    """Every declared table and column exists; else DeclarationError naming the file, the
    table and the column (both capture modes run this before they set anything up)."""
    for table in declaration.tables.values():
        row = conn.execute(_query("table_exists"), {"relation": table.relation}).fetchone()
        if not (row and row[0]):
            raise DeclarationError(
                f'{declaration.path}: tables."{table.relation}": no such table in the database '
                "(create it first: is it in [pgbust] migrations?)"
            )
        missing = conn.execute(
            _query("missing_columns"), {"relation": table.relation, "columns": _columns(table)}
        ).fetchall()
        if missing:
            names = ", ".join(str(r[0]) for r in missing)
            raise DeclarationError(
                f'{declaration.path}: tables."{table.relation}": no such column in '
                f"{table.relation}: {names}"
            )


def capture(conn: psycopg.Connection[Any], declaration: Declaration) -> Captured:
    """Check the declaration, then (re)install the triggers of every declared table and take
    them off the tables no longer declared; one transaction. Idempotent: a re-run that finds
    everything in place changes no trigger and sends no flush."""
    with conn.transaction():
        check(conn, declaration)
        for table in declaration.tables.values():
            conn.execute(
                _query("capture_table"),
                {
                    "relation": table.relation,
                    "key": list(table.key),
                    "depends": list(table.depends),
                    "watched": list(table.watched),
                    "max_rows": table.max_rows,
                },
            )
        forgotten = []
        rows = conn.execute(_query("undeclared"), {"declared": list(declaration.tables)})
        for relation, exists in rows.fetchall():
            conn.execute(
                _query("uncapture" if exists else "forget_missing"), {"relation": relation}
            )
            forgotten.append(str(relation))
    return Captured(list(declaration.tables), forgotten)
