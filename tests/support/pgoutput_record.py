"""Record real pgoutput bytes for the decoder's unit tests (tests/unit/data/pgoutput.json).

    python -m tests.support.pgoutput_record postgresql://postgres@127.0.0.1:PORT/postgres

needs a server with wal_level = logical; it makes a scratch database, runs SCENARIO through a
temporary slot and stores each message's bytes (hex) with the statement that produced it.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgbust.devservers import with_database

OUT = Path(__file__).parents[1] / "unit" / "data" / "pgoutput.json"
SETUP = [
    "CREATE TABLE items (id bigint PRIMARY KEY, group_id bigint, name text, body text)",
    "ALTER TABLE items REPLICA IDENTITY FULL",
    "CREATE TABLE keyed (id bigint PRIMARY KEY, group_id bigint, note text)",
    "CREATE PUBLICATION rec FOR TABLE items, keyed",
]
SCENARIO = [
    "INSERT INTO items VALUES (1, 10, 'a', NULL), (2, 10, 'é ünïcode', repeat('x', 3000))",
    "UPDATE items SET group_id = 11 WHERE id = 1",
    "UPDATE items SET name = 'b' WHERE id = 2",
    "DELETE FROM items WHERE id = 1",
    "INSERT INTO keyed SELECT 1, 5, string_agg(md5(i::text), '') FROM generate_series(1, 200) i",
    "UPDATE keyed SET group_id = 6 WHERE id = 1",
    "UPDATE keyed SET id = 2 WHERE id = 1",
    "DELETE FROM keyed WHERE id = 2",
    "TRUNCATE items, keyed",
    "SELECT pg_logical_emit_message(true, 'pgbust', 'public.items')",
]


def record(server_url: str) -> list[dict[str, Any]]:
    name = f"pgbust_rec_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(with_database(server_url, name), autocommit=True) as conn:
            for statement in SETUP:
                conn.execute(statement.encode())
            conn.execute("SELECT pg_create_logical_replication_slot('rec', 'pgoutput')")
            out = []
            for statement in SCENARIO:
                conn.execute(statement.encode())
                rows = conn.execute(
                    "SELECT data FROM pg_logical_slot_get_binary_changes('rec', NULL, NULL,"
                    " 'proto_version', '1', 'publication_names', 'rec', 'messages', 'true')"
                ).fetchall()
                out.append({"sql": statement, "messages": [bytes(r[0]).hex() for r in rows]})
            conn.execute("SELECT pg_drop_replication_slot('rec')")
            return out
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    OUT.write_text(json.dumps(record(sys.argv[1]), indent=1) + "\n")
    print(f"wrote {OUT}")
