"""A throw-away, migrated and seeded database for one benchmark run, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from db import migrate, seed
from pgbust.devservers import with_database


@contextmanager
def scratch_database(server_url: str, products: int, categories: int = 20) -> Iterator[str]:
    admin = with_database(server_url, "postgres")
    name = f"pgbust_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(server_url, name)
    try:
        migrate.upgrade(url)
        seed.seed(url, products=products, categories=categories, replace=True)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE products")  # plans as on a settled table
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
