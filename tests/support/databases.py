"""A database of a test's own on the chosen Postgres server, dropped when done."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from pgbust.devservers import with_database


@contextmanager
def own_database(server_url: str, prefix: str) -> Iterator[str]:
    """CREATE DATABASE <prefix>_<random> on server_url's server; its URL; DROP ... (FORCE)."""
    admin = with_database(server_url, "postgres")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
