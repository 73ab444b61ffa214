"""The capture triggers against a real Postgres: payload shape, bulk bounds, never raising."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest

from db import capture, migrate
from db.seed import Counts

CHANNEL = "pgbust_changes"
Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def listener(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        yield conn


def received(conn: Conn, timeout: float = 0.5) -> list[dict[str, Any]]:
    return [orjson.loads(n.payload) for n in conn.notifies(timeout=timeout)]


def rows(event: dict[str, Any]) -> list[tuple[str | None, ...]]:
    return sorted(map(tuple, event["r"]))


def test_single_row_update_sends_one_compact_payload(
    seeded: Counts, pg: Conn, listener: Conn
) -> None:
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 7")
    [event] = received(listener)
    assert event["v"] == 2 and event["t"] == "public.products" and event["op"] == "U"
    assert event["c"] == ["id", "category_id"]  # the declared key, then depends
    assert event["r"] == [["7", str(1 + 7 % 5)]]  # values as text, whatever their type
    assert event["p"] is True and event["w"] == ["stock"]
    assert isinstance(event["ts"], int) and event["ts"] > 1_600_000_000_000_000


def test_category_move_carries_old_and_new_category(
    seeded: Counts, pg: Conn, listener: Conn
) -> None:
    pg.execute("UPDATE products SET category_id = 5 WHERE id = 1")  # was category 2
    [event] = received(listener)
    assert rows(event) == [("1", "2"), ("1", "5")]
    assert "p" not in event and "w" not in event  # a depends column changed: not in place


def test_update_that_changes_no_key_column_is_flagged_in_place(
    seeded: Counts, pg: Conn, listener: Conn
) -> None:
    pg.execute("UPDATE products SET stock = stock + 1, name = 'x' WHERE id IN (7, 8)")
    [event] = received(listener)
    assert event["p"] is True and rows(event) == [("7", "3"), ("8", "4")]


@pytest.mark.parametrize(
    ("assignment", "watched"),
    [
        ("name = name || 'x'", []),  # not a watched column: the summary stays
        ("price_cents = price_cents + 1", ["price_cents"]),
        ("stock = stock + 1, price_cents = price_cents + 1", ["price_cents", "stock"]),
        ("stock = stock", []),  # assigned, but no value changed
    ],
)
def test_update_in_place_lists_the_watched_columns_some_row_changed(
    seeded: Counts, pg: Conn, listener: Conn, assignment: str, watched: list[str]
) -> None:
    pg.execute(f"UPDATE products SET {assignment} WHERE id IN (7, 8)")
    [event] = received(listener)
    assert event["p"] is True and sorted(event["w"]) == watched


def test_update_that_changes_a_key_is_not_in_place_even_when_the_key_set_is_kept(
    seeded: Counts, pg: Conn, listener: Conn
) -> None:
    # a new id: the old row is gone from its pages, another one appears
    pg.execute("UPDATE products SET id = 1000000 WHERE id = 7")
    [moved] = received(listener)
    assert "p" not in moved and rows(moved) == [("1000000", "3"), ("7", "3")]
    # two rows swapping categories keep the set of (id, category) tuples? no: each id's tuple
    # changes, so the union has more tuples than rows
    pg.execute("UPDATE products SET category_id = 5 - category_id + 1 WHERE id IN (1, 2)")
    [swapped] = received(listener)
    assert "p" not in swapped


def test_insert_and_delete_carry_the_rows(seeded: Counts, pg: Conn, listener: Conn) -> None:
    row = pg.execute(
        "INSERT INTO products (category_id, name, price_cents, stock)"
        " VALUES (3, 'new', 1, 1) RETURNING id"
    ).fetchone()
    assert row is not None
    pg.execute("DELETE FROM products WHERE id = %s", (row[0],))
    inserted, deleted = received(listener)
    assert (inserted["op"], inserted["r"]) == ("I", [[str(row[0]), "3"]])
    assert (deleted["op"], deleted["r"]) == ("D", [[str(row[0]), "3"]])


def test_statement_touching_no_row_sends_nothing(seeded: Counts, pg: Conn, listener: Conn) -> None:
    pg.execute("UPDATE products SET stock = 0 WHERE id < 0")
    assert received(listener, timeout=0.2) == []


def test_nothing_is_sent_for_a_rolled_back_transaction(
    seeded: Counts, database_url: str, listener: Conn
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE products SET stock = 0 WHERE id = 3")
        conn.rollback()
    assert received(listener, timeout=0.2) == []


def test_medium_statement_is_chunked_under_the_notify_limit(
    seeded: Counts, pg: Conn, listener: Conn
) -> None:
    pg.execute(
        "INSERT INTO products (category_id, name, price_cents, stock)"
        " SELECT 1, 'bulk', 1, 1 FROM generate_series(1, 900)"
    )
    events = received(listener)
    assert 1 < len(events) <= 10
    assert sum(len(e["r"]) for e in events) == 900
    assert all(len(orjson.dumps(e)) < 8000 for e in events)


def test_bulk_update_of_100k_rows_sends_one_table_wide_event(
    database_url: str, pg: Conn, listener: Conn
) -> None:
    from db import seed

    seed.seed(database_url, products=100_000, categories=20, replace=True)
    received(listener, timeout=0.2)
    pg.execute("UPDATE products SET stock = stock + 1")
    events = received(listener)
    assert len(events) == 1
    assert events[0]["all"] is True and events[0]["op"] == "U" and events[0]["n"] == 1001


def test_truncate_sends_a_table_wide_event(seeded: Counts, pg: Conn, listener: Conn) -> None:
    pg.execute("TRUNCATE products")
    [event] = received(listener)
    assert event["op"] == "T" and event["all"] is True and event["t"] == "public.products"


def test_keys_too_long_for_notify_degrade_to_table_wide_without_error(
    pg: Conn, listener: Conn
) -> None:
    pg.execute("CREATE TABLE IF NOT EXISTS wide_keys (k text PRIMARY KEY)")
    pg.execute("SELECT pgbust.capture_table('wide_keys', ARRAY['k'])")
    try:
        [installed] = received(listener)  # a new capture flushes: nothing was announced before
        assert (installed["t"], installed["op"], installed["all"]) == (
            "public.wide_keys",
            "S",
            True,
        )
        pg.execute("INSERT INTO wide_keys VALUES (repeat('x', 9000))")  # must not raise
        [event] = received(listener)
        assert event["t"] == "public.wide_keys" and event["all"] is True
        # long text keys that fit one by one are chunked by size, not widened
        pg.execute(
            "INSERT INTO wide_keys SELECT i || repeat('y', 1500) FROM generate_series(1, 20) i"
        )
        events = received(listener)
        assert len(events) > 1 and not any(e.get("all") for e in events)
        assert all(len(orjson.dumps(e)) < 8000 for e in events)
        assert sum(len(e["r"]) for e in events) == 20
    finally:
        pg.execute("SELECT pgbust.uncapture_table('wide_keys', forget => true)")
        pg.execute("DROP TABLE wide_keys")


def test_declaring_an_unknown_column_is_refused(pg: Conn) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match="no such column"):
        pg.execute("SELECT pgbust.capture_table('products', ARRAY['id'], ARRAY['nope'])")
    with pytest.raises(psycopg.errors.RaiseException, match="no such column"):
        pg.execute(
            "SELECT pgbust.capture_table('products', ARRAY['id'], watched_columns => ARRAY['x'])"
        )


def test_cli_remove_status_install_round_trip(database_url: str, pg: Conn) -> None:
    def db(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "db", "triggers", *args, "--database-url", database_url],
            check=check,
            capture_output=True,
            text=True,
        )

    try:
        assert "public.products" in db("remove").stdout
        assert not any(s.captured for s in capture.status(pg))
        removed = db("status", check=False)
        assert removed.returncode == 1
        assert "public.products" in removed.stdout and "NOT captured: capture removed" in (
            removed.stdout
        )
    finally:
        assert "public.products" in db("install").stdout
    assert {s.relation for s in capture.status(pg) if s.captured} == {
        "public.products",
        "public.categories",
    }
    assert db("status").returncode == 0


def test_copy_from_is_captured_like_an_insert(seeded: Counts, pg: Conn, listener: Conn) -> None:
    with (
        pg.cursor() as cur,
        cur.copy("COPY products (category_id, name, price_cents, stock) FROM STDIN") as copy,
    ):
        copy.write_row((3, "copied", 1, 1))
        copy.write_row((4, "copied", 1, 1))
    [event] = received(listener)
    assert event["op"] == "I" and sorted(c for _, c in event["r"]) == ["3", "4"]


def test_replica_role_writes_are_announced_row_by_row_up_to_max_rows(
    seeded: Counts, database_url: str, listener: Conn
) -> None:
    # what an apply worker fires: row triggers only (here in an ordinary session)
    with psycopg.connect(database_url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE products SET category_id = 5 WHERE id = 1")  # was category 2
        conn.execute("DELETE FROM products WHERE id = 2")
        conn.execute("UPDATE products SET name = 'x' WHERE id = 3")
        conn.execute("UPDATE products SET stock = stock + 1 WHERE id = 3")
        conn.commit()
    moved, deleted, named, stocked = received(listener)
    assert (moved["v"], moved["t"]) == (2, "public.products")
    assert (moved["op"], moved["r"]) == ("U", [["1", "2"], ["1", "5"]]) and "p" not in moved
    assert (deleted["op"], deleted["r"]) == ("D", [["2", "3"]])
    # in place: one tuple, and which watched columns the row changed
    assert (named["r"], named["p"], named["w"]) == ([["3", "4"]], True, [])
    assert (stocked["p"], stocked["w"]) == (True, ["stock"])
    with psycopg.connect(database_url) as conn:  # over max_rows in one transaction
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "SELECT pgbust.capture_table('products', ARRAY['id'], ARRAY['category_id'],"
            " max_rows => 10)"
        )
        received(listener)
        conn.execute("UPDATE products SET stock = stock + 1 WHERE id <= 30")
        conn.commit()
    try:
        events = received(listener)
        assert len(events) == 11 and all("r" in e for e in events[:10])
        assert events[10]["all"] is True and events[10]["n"] == 11
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            capture.install(conn)  # the declaration's own


def test_upgrade_again_touches_no_trigger_and_announces_nothing(
    database_url: str, pg: Conn, listener: Conn
) -> None:
    query = "SELECT relation, fingerprint FROM pgbust.capture_status ORDER BY 1"
    before = pg.execute(query).fetchall()
    migrate.upgrade(database_url)
    assert pg.execute(query).fetchall() == before  # no trigger re-created or re-enabled
    assert received(listener, timeout=0.3) == []


def test_enable_trigger_demotion_is_undone_by_the_ddl_event_trigger(pg: Conn) -> None:
    # ENABLE TRIGGER [ALL] (as pg_restore --disable-triggers ends) makes them plain ORIGIN ones
    pg.execute("ALTER TABLE products ENABLE TRIGGER ALL")
    states: dict[str, str] = dict(
        pg.execute(
            "SELECT tgname, tgenabled FROM pg_trigger"
            " WHERE tgrelid = 'products'::regclass AND tgname LIKE 'pgbust%'"
        ).fetchall()
    )
    assert states == {
        "pgbust_capture_insert": "O",
        "pgbust_capture_update": "O",
        "pgbust_capture_delete": "O",
        "pgbust_capture_truncate": "A",
        "pgbust_capture_replica": "R",
    }


def test_status_says_which_member_lacks_what(pg: Conn) -> None:
    try:
        pg.execute("ALTER EVENT TRIGGER pgbust_capture_ddl DISABLE")  # it would undo these
        pg.execute("ALTER TABLE products ENABLE TRIGGER pgbust_capture_truncate")  # ORIGIN only
        pg.execute("ALTER TABLE products DISABLE TRIGGER pgbust_capture_replica")
        [products] = [s for s in capture.status(pg) if s.relation == "public.products"]
        assert not products.captured and products.triggers == 3
        assert products.problems == [
            "public.products: replica trigger disabled (ALTER TABLE ... DISABLE TRIGGER); "
            "truncate trigger fires for origin writes only (ENABLE TRIGGER, e.g. after "
            "pg_restore --disable-triggers): replica-role writes (logical replication, "
            "session_replication_role = replica) are missed"
        ]
        assert products.ddl_problem is not None
    finally:
        pg.execute("ALTER EVENT TRIGGER pgbust_capture_ddl ENABLE ALWAYS")
        capture.install(pg)
    assert all(s.captured and s.ddl_problem is None for s in capture.status(pg))


def test_columns_named_like_the_triggers_own_variables_are_captured(
    pg: Conn, listener: Conn
) -> None:
    pg.execute("CREATE TABLE odd_names (n int, head text, keys int, chunk int, PRIMARY KEY (n))")
    pg.execute(
        "SELECT pgbust.capture_table('odd_names', ARRAY['n'], ARRAY['head'], ARRAY['chunk'])"
    )
    try:
        received(listener)
        pg.execute("INSERT INTO odd_names VALUES (1, 'h', 2, 3)")
        pg.execute("UPDATE odd_names SET chunk = 4")
        inserted, updated = received(listener)
        assert (inserted["c"], inserted["r"]) == (["n", "head"], [["1", "h"]])
        assert (updated["r"], updated["p"], updated["w"]) == ([["1", "h"]], True, ["chunk"])
    finally:
        pg.execute("SELECT pgbust.uncapture_table('odd_names', forget => true)")
        pg.execute("DROP TABLE odd_names")
