"""A partitioned products table (by category, with a default partition) under a real stack: one
invalidator and two API instances. A statement trigger fires only for the table a statement
names, so writes straight into a partition, partitions created or attached later, detached or
dropped ones must each reach every tier (the final sweep), or show as "not captured"."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from db import capture, migrate, seed
from tests.support.capture_stack import CHECK_S, Stack, start_stack
from tests.support.databases import own_database
from tests.support.servers import RedisServer, wait_until

Conn = psycopg.Connection[tuple[Any, ...]]

# The catalogue's products table (db/migrations/0001, 0002), partitioned by category.
PARTITIONED_PRODUCTS = """
DROP TABLE products;
CREATE TABLE products (
    id          bigserial,
    category_id bigint NOT NULL REFERENCES categories (id),
    name        text   NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    stock       integer NOT NULL CHECK (stock >= 0),
    version     bigint NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (id, category_id)
) PARTITION BY LIST (category_id);
CREATE TABLE products_c1 PARTITION OF products FOR VALUES IN (1);
CREATE TABLE products_c2 PARTITION OF products FOR VALUES IN (2);
CREATE TABLE products_rest PARTITION OF products DEFAULT;
CREATE INDEX ON products (category_id, id) INCLUDE (price_cents, stock);
CREATE TRIGGER products_bump_version BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION pgbust.bump_product_version();
"""
NEW_ROW = "(category_id, name, price_cents, stock) VALUES ({category}, 'direct', 7, 7)"


@pytest.fixture(scope="module")
def partitioned_url(database_url: str) -> Iterator[str]:
    with own_database(database_url, "pgbust_parts") as url:
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(PARTITIONED_PRODUCTS)
            capture.install(conn)  # the catalogue's declaration, now on a partitioned table
        yield url


@pytest.fixture(scope="module")
def stack(
    partitioned_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    running = start_stack(partitioned_url, redis_server, tmp_path_factory.mktemp("parts"))
    running.probe_id = 3  # in the default partition, which no test truncates
    yield running
    running.processes.stop_all()


@pytest.fixture
def db(partitioned_url: str) -> Iterator[Conn]:
    with psycopg.connect(partitioned_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def fresh(stack: Stack, partitioned_url: str, db: Conn) -> Stack:
    """30 products in categories 1-5 (1 and 2 have partitions of their own, 3-5 are in the
    default one) and empty categories 6 and 7; every entry cached on every tier."""
    seed.seed(partitioned_url, products=30, categories=5, replace=True)
    db.execute("INSERT INTO categories (name) VALUES ('Category 6'), ('Category 7')")
    stack.prime()
    return stack


def products_status(conn: Conn) -> capture.CaptureStatus:
    [row] = [s for s in capture.status(conn) if s.relation == "public.products"]
    return row


def test_writes_straight_into_partitions_are_invalidated_on_every_tier(
    fresh: Stack, db: Conn
) -> None:
    db.execute("UPDATE products_c1 SET price_cents = price_cents + 1 WHERE id = 5")
    db.execute("DELETE FROM products_rest WHERE id = 7")  # the default partition
    db.execute("INSERT INTO products_c2 " + NEW_ROW.format(category=2))
    fresh.assert_every_tier_fresh()
    db.execute("TRUNCATE products_c2")
    fresh.assert_every_tier_fresh()
    status = products_status(db)
    assert status.captured and status.members == 4, status.problems


def test_partitions_created_or_attached_later_are_captured_and_invalidated(
    fresh: Stack, db: Conn
) -> None:
    try:
        db.execute("CREATE TABLE products_c6 PARTITION OF products FOR VALUES IN (6)")
        db.execute("INSERT INTO products_c6 " + NEW_ROW.format(category=6))
        fresh.assert_every_tier_fresh()
        # a table with rows of its own becomes a partition: category 7's rows appear
        db.execute(
            "CREATE TABLE products_c7 (LIKE products INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        db.execute("INSERT INTO products_c7 " + NEW_ROW.format(category=7))
        db.execute("ALTER TABLE products ATTACH PARTITION products_c7 FOR VALUES IN (7)")
        fresh.assert_every_tier_fresh()
        db.execute("UPDATE products_c7 SET stock = 8")
        fresh.assert_every_tier_fresh()
        status = products_status(db)
        assert status.captured and status.members == 6, status.problems
        # and rows disappear: a partition detached, another dropped
        db.execute("ALTER TABLE products DETACH PARTITION products_c7")
        fresh.assert_every_tier_fresh()
        db.execute("DROP TABLE products_c6")
        fresh.assert_every_tier_fresh()
        assert products_status(db).members == 4
    finally:
        db.execute("DROP TABLE IF EXISTS products_c6, products_c7")


def test_partition_created_without_ddl_event_triggers_shows_as_not_captured_and_is_flushed(
    fresh: Stack, db: Conn
) -> None:
    try:
        db.execute("ALTER EVENT TRIGGER pgbust_capture_ddl DISABLE")
        db.execute("CREATE TABLE products_c6 PARTITION OF products FOR VALUES IN (6)")
        status = products_status(db)
        assert not status.captured
        assert status.problems == [
            "public.products_c6: delete trigger missing; insert trigger missing; "
            "truncate trigger missing; update trigger missing"
        ]
        assert wait_until(lambda: fresh.capture_ok("public.products") == 0, 10 * CHECK_S)
        bumps = fresh.epoch_bumps("not_captured")
        db.execute("INSERT INTO products_c6 " + NEW_ROW.format(category=6))  # unannounced
        fresh.wait_epoch_bumps("not_captured", bumps, count=2)
        result = fresh.sweep()
        assert result.stale == 0, result.report()
        # `python -m db triggers install` puts the missing triggers on the new partition
        installed = fresh.db("triggers", "install")
        assert installed.returncode == 0, installed.stderr
        assert products_status(db).captured
        assert wait_until(lambda: fresh.capture_ok("public.products") == 1, 10 * CHECK_S)
    finally:
        db.execute("ALTER EVENT TRIGGER pgbust_capture_ddl ENABLE ALWAYS")
        db.execute("DROP TABLE IF EXISTS products_c6")
