"""Capture where server settings or roles matter, on a private cluster (wal_level = logical,
max_prepared_transactions > 0): a logical replication subscriber, two-phase commit, and an
install by a role that is not a superuser."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from db import capture, migrate, seed
from tests.support.capture_stack import start_stack
from tests.support.servers import PostgresCluster, RedisServer, wait_until

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    # not under pytest's basetemp: other sessions of the same user may clean that up meanwhile
    folder = Path(tempfile.mkdtemp(prefix="pgbust-capture-pg-"))
    pg = PostgresCluster(folder / "pg")
    try:
        pg.init()
        pg.configure(wal_level="logical", max_prepared_transactions=2)
        pg.start()
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


def create_database(cluster: PostgresCluster, name: str, owner: str = "postgres") -> str:
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )
    return f"postgresql://{owner}@127.0.0.1:{cluster.port}/{name}"


def test_changes_applied_by_a_logical_replication_subscriber_are_invalidated_on_every_tier(
    cluster: PostgresCluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    # pgbust on the subscriber: its rows change only through the apply worker, which runs with
    # session_replication_role = replica and fires row triggers only
    publisher = create_database(cluster, "publisher")
    subscriber = create_database(cluster, "subscriber")
    migrate.upgrade(publisher)
    migrate.upgrade(subscriber)
    seed.seed(publisher, products=30, categories=5)
    with psycopg.connect(publisher, autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION pgbust_pub FOR TABLE categories, products")
        # in the same cluster the slot must exist before CREATE SUBSCRIPTION
        conn.execute("SELECT pg_create_logical_replication_slot('pgbust_sub', 'pgoutput')")
    with psycopg.connect(subscriber, autocommit=True) as conn:
        conn.execute(
            f"CREATE SUBSCRIPTION pgbust_sub CONNECTION 'host=127.0.0.1 port={cluster.port}"
            " dbname=publisher user=postgres' PUBLICATION pgbust_pub"
            " WITH (create_slot = false, slot_name = 'pgbust_sub')"
        )

        def synced() -> bool:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM products),"
                " (SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel)"
            ).fetchone()
            return row is not None and row[0] == 30 and bool(row[1])

        assert wait_until(synced, timeout=30)
    stack = start_stack(subscriber, redis_server, tmp_path)
    # the drain's probe is written on the publisher too: it arrives by replication (a write
    # on the subscriber would make the two diverge)
    stack.probe_url = publisher
    try:
        stack.prime()
        with psycopg.connect(publisher, autocommit=True) as conn:
            conn.execute("UPDATE products SET price_cents = price_cents + 1 WHERE id = 7")
            conn.execute("UPDATE products SET category_id = 5 WHERE id = 8")  # was category 4
            conn.execute("DELETE FROM products WHERE id = 9")
            conn.execute(
                "INSERT INTO products (category_id, name, price_cents, stock)"
                " VALUES (2, 'replicated', 1, 1)"
            )
        stack.assert_every_tier_fresh()
    finally:
        stack.processes.stop_all()
        with psycopg.connect(subscriber, autocommit=True) as conn:
            conn.execute("DROP SUBSCRIPTION pgbust_sub")


def test_prepare_transaction_after_a_captured_write_fails_and_changes_nothing(
    cluster: PostgresCluster,
) -> None:
    # NOTIFY, which the capture triggers send, cannot be part of a prepared transaction
    url = create_database(cluster, "twophase")
    migrate.upgrade(url)
    seed.seed(url, products=10, categories=2)
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE products SET stock = 0 WHERE id = 1")
        with pytest.raises(
            psycopg.errors.FeatureNotSupported,
            match="cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY",
        ):
            conn.execute("PREPARE TRANSACTION 'pgbust_captured'")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT stock FROM products WHERE id = 1").fetchone()
        assert row is not None and row[0] != 0  # the whole transaction was rolled back
        assert conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
        # two-phase commit itself works here: a table nobody captures
        conn.execute("CREATE TABLE ledger (id integer)")
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO ledger VALUES (1)")
        conn.execute("PREPARE TRANSACTION 'pgbust_uncaptured'")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("COMMIT PREPARED 'pgbust_uncaptured'")
        assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (1,)


def test_install_without_a_superuser_captures_rows_and_reports_ddl_not_captured(
    cluster: PostgresCluster,
) -> None:
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute("CREATE ROLE pgbust_owner LOGIN")
    url = create_database(cluster, "owned", owner="pgbust_owner")

    def db(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "db", *args, "--database-url", url],
            capture_output=True,
            text=True,
            timeout=60,
        )

    upgrade = db("upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert "warning: DDL not captured: event trigger pgbust_capture_ddl missing" in upgrade.stderr
    status = db("triggers", "status")
    assert status.returncode == 1
    assert (
        "public.products: keys id; depends category_id; watched price_cents,stock; "
        "max_rows 1000; channel pgbust_changes; "
    ) in status.stdout
    assert "1 table; captured" in status.stdout
    assert "creating event triggers needs a superuser" in status.stdout
    with psycopg.connect(url, autocommit=True) as conn:
        rows = capture.status(conn)
        assert all(row.captured for row in rows) and all(row.ddl_problem for row in rows)
        conn.execute("LISTEN pgbust_changes")
        seed.seed(url, products=5, categories=1)
        list(conn.notifies(timeout=0.5))  # the seed's own
        with psycopg.connect(url, autocommit=True) as writer:
            writer.execute("UPDATE products SET stock = 1 WHERE id = 2")
        [update] = [orjson.loads(n.payload) for n in conn.notifies(timeout=2, stop_after=1)]
        assert (update["t"], update["op"], update["r"]) == ("public.products", "U", [["2", "1"]])
