"""What the capture triggers cost per statement, inside the server (no commit, no network).

Each configuration runs the same statements from one PL/pgSQL loop, on rows no earlier run
touched (no HOT chains), and the best of several rounds is kept (the machine is shared):

  none            no capture trigger
  statement only  the four statement triggers (what capture was before the REPLICA row trigger)
  full            all five: + pgbust_capture_replica, a row trigger enabled REPLICA, which does
                  not fire in an ordinary session
  full, replica   the same, in a session_replication_role = replica session (the row trigger
                  fires for every row, the statement ones do not): the apply worker's path
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg

from bench import report
from bench.scratch import scratch_database
from db import capture

PRODUCTS = 200_000
LOOP = """
DO $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    FOR i IN 0..%(statements)s - 1 LOOP
        UPDATE products SET stock = stock + 1
        WHERE id BETWEEN %(first)s + i * %(rows)s AND %(first)s + (i + 1) * %(rows)s - 1;
    END LOOP;
    PERFORM set_config('bench.us', (extract(epoch FROM clock_timestamp() - t0) * 1e6)::text,
                       false);
END
$$
"""
CONFIGS = ("none", "statement only", "full", "full, replica")


def _configure(conn: psycopg.Connection[Any], config: str) -> None:
    capture.install(conn)
    if config == "none":
        capture.remove(conn)
    elif config == "statement only":
        conn.execute("ALTER EVENT TRIGGER pgbust_capture_drop DISABLE")
        try:
            conn.execute("DROP TRIGGER pgbust_capture_replica ON products")
        finally:
            conn.execute("ALTER EVENT TRIGGER pgbust_capture_drop ENABLE ALWAYS")
    conn.execute("RESET session_replication_role")
    if config == "full, replica":
        conn.execute("SET session_replication_role = replica")


def _us_per_statement(
    conn: psycopg.Connection[Any], first: int, statements: int, rows: int
) -> float:
    with conn.transaction(force_rollback=True):  # no commit: the trigger's own cost only
        conn.execute(LOOP % {"statements": statements, "rows": rows, "first": first})
        row = conn.execute("SELECT current_setting('bench.us')::float8").fetchone()
    assert row is not None
    return float(row[0]) / statements


def measure(url: str, rounds: int, statements: int) -> list[dict[str, Any]]:
    results = []
    with psycopg.connect(url, autocommit=True) as conn:
        for rows in (1, 100):
            best: dict[str, float] = {}
            first = 1
            for _ in range(rounds):
                for config in CONFIGS:
                    _configure(conn, config)
                    us = _us_per_statement(conn, first, statements, rows)
                    first = first + statements * rows
                    if first + statements * rows > PRODUCTS:
                        first = 1
                    best[config] = min(best.get(config, us), us)
            conn.execute("RESET session_replication_role")
            capture.install(conn)
            results.append({"rows_per_statement": rows, "us_per_statement": best})
    return results


def _table(data: dict[str, Any]) -> str:
    header = ["rows per statement", *(f"{c} µs" for c in CONFIGS)]
    return report.markdown_table(
        header,
        [
            [r["rows_per_statement"], *(round(r["us_per_statement"][c], 1) for c in CONFIGS)]
            for r in data["results"]
        ],
    )


def run(out: Path, quick: bool) -> None:
    server = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/pgbust")
    load_before = round(os.getloadavg()[0], 2)
    with scratch_database(server, PRODUCTS) as url:
        results = measure(url, rounds=2 if quick else 5, statements=200 if quick else 1000)
    data = {
        "quick": quick,
        "load_average_1m": {"start": load_before, "end": round(os.getloadavg()[0], 2)},
        "results": results,
    }
    report.write(out, "capture", data, _table(data))
    print(_table(data))
