"""Committed changes that fire no ordinary trigger (issue 11, item 4), against a real stack: one
invalidator and two API instances, real Postgres and Redis. Each change must reach every tier
(each instance's L1 and Redis, proven by the final sweep), or the table must show at once as
"not captured" in pgbust.capture_status, `python -m db triggers status`, the invalidator's
metrics and log, and be flushed while it is not."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from db import capture, seed
from pgbust.devservers import postgres_bindir, with_database
from tests.support.capture_stack import CHECK_S, Stack, metric, start_stack
from tests.support.servers import RedisServer, wait_until

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture(scope="module")
def stack(
    database_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    running = start_stack(database_url, redis_server, tmp_path_factory.mktemp("capture"))
    yield running
    running.processes.stop_all()


@pytest.fixture
def fresh(stack: Stack, database_url: str) -> Stack:
    """A small known catalogue (product i in category 1 + i % 5), every entry cached on every
    tier; the capture as installed."""
    seed.seed(database_url, products=30, categories=5, replace=True)
    stack.prime()
    return stack


def products_status(conn: Conn) -> capture.CaptureStatus:
    [row] = [s for s in capture.status(conn) if s.relation == "public.products"]
    return row


def test_writes_under_session_replication_role_replica_are_invalidated_on_every_tier(
    fresh: Stack, database_url: str
) -> None:
    # what a logical replication apply worker, pg_restore-style loaders and ETL tools do:
    # ordinary (ENABLE ORIGIN) triggers do not fire in this session
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE products SET price_cents = price_cents + 1 WHERE id = 7")
        conn.execute("UPDATE products SET category_id = 5 WHERE id = 8")  # was category 4
        conn.execute("DELETE FROM products WHERE id = 9")
        conn.execute(
            "INSERT INTO products (category_id, name, price_cents, stock)"
            " VALUES (2, 'replica', 1, 1)"
        )
    fresh.assert_every_tier_fresh()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("TRUNCATE products")
        conn.execute("RESET session_replication_role")
        # an ordinary write after it, for the drain's probe
        conn.execute(
            "INSERT INTO products (id, category_id, name, price_cents, stock)"
            " VALUES (1, 2, 'probe', 1, 1)"
        )
    fresh.assert_every_tier_fresh()


def test_pg_restore_data_only_with_disable_triggers_is_invalidated_on_every_tier(
    fresh: Stack, database_url: str, pg: Conn, tmp_path: Path
) -> None:
    # a dump of products from elsewhere: new rows in categories 2 and 3 (cached summaries)
    source = f"pgbust_dump_{uuid.uuid4().hex[:8]}"
    admin = with_database(database_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(source)))
    try:
        with psycopg.connect(with_database(database_url, source), autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE products (id bigint, category_id bigint, name text,"
                " price_cents bigint, stock integer, version bigint, updated_at timestamptz)"
            )
            conn.execute(
                "INSERT INTO products SELECT 1000 + i, 2 + i % 2, 'restored ' || i, 5, 5, 1,"
                " now() FROM generate_series(1, 10) i"
            )
        dump = tmp_path / "products.dump"
        bindir = postgres_bindir()
        subprocess.run(
            [str(bindir / "pg_dump"), "-Fc", "--data-only", "-t", "public.products", "-f",
             str(dump), with_database(database_url, source)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        # ALTER TABLE products DISABLE TRIGGER ALL; COPY ...; ALTER TABLE ... ENABLE TRIGGER ALL
        subprocess.run(
            [str(bindir / "pg_restore"), "--data-only", "--disable-triggers", "-d",
             database_url, str(dump)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(source))
            )
    fresh.assert_every_tier_fresh()
    # ENABLE TRIGGER ALL made the REPLICA and ALWAYS capture triggers plain ORIGIN ones: undone
    assert products_status(pg).captured, products_status(pg).problems


def test_alter_column_type_using_rewrite_is_invalidated_on_every_tier(
    fresh: Stack, pg: Conn
) -> None:
    # rewrites every row, fires no row or statement trigger
    pg.execute("ALTER TABLE products ALTER COLUMN price_cents TYPE bigint USING price_cents + 1")
    fresh.assert_every_tier_fresh()


def test_writes_straight_into_an_inheritance_child_are_invalidated_on_every_tier(
    fresh: Stack, pg: Conn
) -> None:
    try:
        pg.execute("CREATE TABLE products_archive () INHERITS (products)")
        pg.execute(
            "INSERT INTO products_archive (id, category_id, name, price_cents, stock)"
            " VALUES (5001, 2, 'archived', 1, 1), (5002, 3, 'archived', 1, 1)"
        )
        fresh.assert_every_tier_fresh()
        pg.execute("UPDATE products_archive SET price_cents = 2 WHERE id = 5001")
        pg.execute("DELETE FROM products_archive WHERE id = 5002")
        fresh.assert_every_tier_fresh()
        pg.execute("TRUNCATE products_archive")  # the parent's rows stay
        fresh.assert_every_tier_fresh()
        assert products_status(pg).members == 2
    finally:
        pg.execute("DROP TABLE IF EXISTS products_archive")


def test_disabled_capture_trigger_shows_as_not_captured_everywhere_and_is_flushed(
    fresh: Stack, pg: Conn
) -> None:
    try:
        pg.execute("ALTER TABLE products DISABLE TRIGGER pgbust_capture_update")
        status = products_status(pg)
        assert not status.captured
        assert status.problems == [
            "public.products: update trigger disabled (ALTER TABLE ... DISABLE TRIGGER)"
        ]
        cli = fresh.db("triggers", "status")
        assert cli.returncode == 1
        assert "public.products: " in cli.stdout and "NOT captured: public.products: update" in (
            cli.stdout
        )
        assert wait_until(lambda: fresh.capture_ok("public.products") == 0, 10 * CHECK_S)
        assert "public.products is NOT captured: public.products: update trigger disabled" in (
            fresh.log()
        )
        health = httpx.get(fresh.invalidator.base_url + "/healthz", timeout=5).json()
        assert health["capture"]["ok"] is False
        assert list(health["capture"]["not_captured"]) == ["public.products"]
        bumps = fresh.epoch_bumps("not_captured")
        pg.execute("UPDATE products SET price_cents = price_cents + 1 WHERE id = 7")  # unseen
        # two more flushes: the second one's check certainly started after that commit
        fresh.wait_epoch_bumps("not_captured", bumps, count=2)
        result = fresh.sweep()
        assert result.stale == 0, result.report()
    finally:
        pg.execute("ALTER TABLE products ENABLE TRIGGER pgbust_capture_update")
    assert wait_until(lambda: fresh.capture_ok("public.products") == 1, 10 * CHECK_S)
    assert "public.products is captured again" in fresh.log()


def test_capture_trigger_enabled_for_replica_writes_only_shows_as_not_captured(
    fresh: Stack, pg: Conn
) -> None:
    try:
        pg.execute("ALTER TABLE products ENABLE REPLICA TRIGGER pgbust_capture_update")
        status = products_status(pg)
        assert not status.captured
        assert status.problems == [
            "public.products: update trigger fires only for replica-role writes"
            " (ENABLE REPLICA TRIGGER)"
        ]
        cli = fresh.db("triggers", "status")
        assert cli.returncode == 1 and "fires only for replica-role writes" in cli.stdout
        assert wait_until(lambda: fresh.capture_ok("public.products") == 0, 10 * CHECK_S)
        bumps = fresh.epoch_bumps("not_captured")
        pg.execute("UPDATE products SET price_cents = price_cents + 1 WHERE id = 7")
        fresh.wait_epoch_bumps("not_captured", bumps, count=2)
        result = fresh.sweep()
        assert result.stale == 0, result.report()
    finally:
        installed = fresh.db("triggers", "install")
        assert installed.returncode == 0, installed.stderr
    assert products_status(pg).captured
    assert wait_until(lambda: fresh.capture_ok("public.products") == 1, 10 * CHECK_S)


def test_rewrite_without_ddl_event_triggers_is_flushed_by_the_periodic_check(
    fresh: Stack, pg: Conn
) -> None:
    # where the event triggers could not be created (no superuser), or were disabled
    try:
        pg.execute("ALTER EVENT TRIGGER pgbust_capture_ddl DISABLE")
        pg.execute("ALTER EVENT TRIGGER pgbust_capture_rewrite DISABLE")
        problem = products_status(pg).ddl_problem
        assert problem is not None and problem.startswith(
            "DDL not captured: event trigger pgbust_capture_ddl disabled, "
            "pgbust_capture_rewrite disabled"
        )
        cli = fresh.db("triggers", "status")
        assert cli.returncode == 1 and "DDL not captured" in cli.stdout
        ddl_ok = "pgbust_invalidator_capture_ddl_ok"
        assert wait_until(lambda: metric(fresh.invalidator, ddl_ok) == 0, 10 * CHECK_S)
        bumps = fresh.epoch_bumps("capture_changed")
        pg.execute(
            "ALTER TABLE products ALTER COLUMN price_cents TYPE bigint USING price_cents + 1"
        )
        # the check that saw the new relfilenode ran after the commit: one flush is enough
        fresh.wait_epoch_bumps("capture_changed", bumps)
        result = fresh.sweep()
        assert result.stale == 0, result.report()
        assert "capture of public.products changed" in fresh.log()
    finally:
        pg.execute("ALTER EVENT TRIGGER pgbust_capture_ddl ENABLE ALWAYS")
        pg.execute("ALTER EVENT TRIGGER pgbust_capture_rewrite ENABLE ALWAYS")
    assert products_status(pg).ddl_problem is None
    assert wait_until(lambda: metric(fresh.invalidator, ddl_ok) == 1, 10 * CHECK_S)
