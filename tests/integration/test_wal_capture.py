"""WAL capture against a real Postgres with wal_level = logical (a private cluster, started
once for this module): what arrives, at least once, and what happens when the slot or the
connection goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg import sql

from db import migrate, wal
from invalidator.app import Invalidator
from invalidator.listener import FlushRequest
from invalidator.metrics import Metrics
from invalidator.settings import Settings
from invalidator.wal_source import WalBatch, WalItem, WalSource
from pgbust.declaration import Declaration, parse
from pgbust.devservers import with_database
from pgbust.keys import Keyspace
from pgbust.protocol import Lease
from pgbust.redis_cache import RedisCache
from pgbust.rules import Change, explain
from tests.support.demo import demo_tags
from tests.support.proxy import TcpProxy
from tests.support.servers import PostgresCluster, RedisServer

TABLES_SQL = """
CREATE TABLE notes (slug text PRIMARY KEY, body text);
CREATE TABLE devices (id uuid PRIMARY KEY, owner text);
CREATE TABLE order_lines (order_id bigint, line_no int, sku text, PRIMARY KEY (order_id, line_no));
CREATE TABLE events (region text NOT NULL, id bigint NOT NULL, kind text,
                     PRIMARY KEY (region, id)) PARTITION BY LIST (region);
CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
CREATE TABLE undeclared (id int PRIMARY KEY);
"""
DECLARATION_TOML = """
[tables."public.products"]
key = ["id"]
depends = ["category_id"]
entries = ["product:{id}"]
tags = ["category:{category_id}:pages",
        { tag = "category:{category_id}:summary", columns = ["price_cents", "stock"] }]

[tables."public.categories"]
key = ["id"]
tags = ["category:{id}:pages"]

[tables."public.notes"]
key = ["slug"]
entries = ["note:{slug}"]

[tables."public.devices"]
key = ["id"]
depends = ["owner"]
entries = ["device:{id}"]
tags = ["owner:{owner}"]

[tables."public.order_lines"]
key = ["order_id", "line_no"]
depends = ["sku"]
entries = ["line:{order_id}:{line_no}"]

[tables."public.events"]
key = ["region", "id"]
depends = ["kind"]
entries = ["event:{region}:{id}"]
"""
DECLARATION = parse(DECLARATION_TOML)
FAST = {"status_interval_s": 0.2, "keepalive_s": 0.3, "timeout_s": 1.5, "slot_check_s": 0.5}


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    # Not under pytest's basetemp: every pytest session as root makes pytest-of-root private
    # again (0700), which would lock the postgres user out of a cluster living inside it.
    folder = Path(tempfile.mkdtemp(prefix="pgbust-walpg-"))
    pg = PostgresCluster(
        folder, {"wal_level": "logical", "max_wal_senders": "20", "max_replication_slots": "20"}
    )
    pg.init()
    pg.start()
    yield pg
    pg.stop("immediate")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def wal_url(cluster: PostgresCluster) -> str:
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE pgbust")
    url = with_database(cluster.admin_url, "pgbust")
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TABLES_SQL.encode())
        conn.execute("INSERT INTO categories (id, name) VALUES (1, 'one'), (2, 'two'), (3, 'x')")
    return url


@pytest.fixture
def names(wal_url: str) -> Iterator[tuple[str, str]]:
    """A slot and publication of this test's own (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(wal_url, autocommit=True) as conn:
        wal.ensure(conn, name, name, DECLARATION.tables)
    yield name, name
    with psycopg.connect(wal_url, autocommit=True) as conn:
        wal.remove(conn, name, name)


class Run:
    """A WalSource in the test's loop and what it delivered."""

    def __init__(self, source: WalSource, queue: asyncio.Queue[WalItem]) -> None:
        self.source = source
        self.queue = queue
        self.items: list[WalItem] = []

    @property
    def changes(self) -> list[Change]:
        return [c for i in self.items if isinstance(i, WalBatch) for c in i.changes]

    @property
    def batches(self) -> list[WalBatch]:
        return [i for i in self.items if isinstance(i, WalBatch)]

    async def until(self, done: Callable[[], bool], within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not delivered in {within_s} s: {self.items}")
            with contextlib.suppress(TimeoutError):
                self.items.append(await asyncio.wait_for(self.queue.get(), left))

    async def confirm_all(self) -> None:
        for batch in self.batches:
            await self.source.confirm(batch.end_lsn)


@asynccontextmanager
async def streaming(
    url: str, names: tuple[str, str], declaration: Declaration = DECLARATION, **options: Any
) -> AsyncIterator[Run]:
    queue: asyncio.Queue[WalItem] = asyncio.Queue()
    slot, publication = names
    source = WalSource(url, slot, publication, declaration, queue, Metrics(), **{**FAST, **options})
    task = asyncio.create_task(source.run())
    run = Run(source, queue)
    try:
        deadline = time.monotonic() + 10
        while not source.connected:
            assert time.monotonic() < deadline, "the source did not connect"
            await asyncio.sleep(0.02)
        yield run
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        stream = source._stream
        if stream is not None:
            await stream.close()


def _execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def _marker(run: Run, slug: str) -> Callable[[], bool]:
    """True once the insert of note `slug` arrived (a commit after everything before it)."""
    return lambda: any(
        c.table == "public.notes" and any((r.new or {}).get("slug") == slug for r in c.rows)
        for c in run.changes
    )


def _rows(run: Run, table: str) -> list[tuple[str, Any, Any]]:
    return [(r.kind, r.old, r.new) for c in run.changes if c.table == table for r in c.rows]


def _wal_daemon_settings(
    wal_url: str,
    names: tuple[str, str],
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    **overrides: Any,
) -> Settings:
    """A wal-mode invalidator's settings: the test declaration, a namespace and a lock of
    its own, on the slot and publication `names` (and any other setting given)."""
    config = tmp_path / "pgbust.toml"
    config.write_text(DECLARATION_TOML)
    monkeypatch.setenv("PGBUST_CONFIG", str(config))
    return Settings(
        database_url=wal_url,
        redis_url=redis_server.url,
        namespace=f"w{uuid.uuid4().hex[:8]}",
        lock_id=random.randint(1, 2**40),
        metrics_port=0,
        capture="wal",
        wal_slot=names[0],
        wal_publication=names[1],
        **overrides,
    )


async def test_inserts_updates_deletes_and_truncate_of_declared_tables_arrive_as_changes(
    wal_url: str, names: tuple[str, str]
) -> None:
    async with streaming(wal_url, names) as run:
        assert run.source.slot_existed is True  # created by `ensure`: nothing to flush
        _execute(
            wal_url,
            "INSERT INTO products (id, category_id, name, price_cents, stock)"
            " VALUES (100, 1, 'p', 5, 1)",
            "UPDATE products SET stock = 2 WHERE id = 100",
            "UPDATE products SET name = 'renamed' WHERE id = 100",
            "DELETE FROM products WHERE id = 100",
            "TRUNCATE notes",
            "INSERT INTO notes VALUES ('end', '')",
        )
        await run.until(_marker(run, "end"))
    assert _rows(run, "public.products") == [
        ("I", None, {"id": "100", "category_id": "1"}),
        ("U", {"id": "100", "category_id": "1"}, {"id": "100", "category_id": "1"}),
        ("U", {"id": "100", "category_id": "1"}, {"id": "100", "category_id": "1"}),
        ("D", {"id": "100", "category_id": "1"}, None),
    ]
    updates = [r for c in run.changes if c.op == "U" for r in c.rows]
    assert [u.changed for u in updates] == [frozenset({"stock"}), frozenset()]
    summary = "category:1:summary"
    stock, rename = (c for c in run.changes if c.op == "U")
    assert summary in explain(DECLARATION, stock)[0].tags
    assert summary not in explain(DECLARATION, rename)[0].tags  # a rename leaves the summary
    truncate = [c for c in run.changes if c.op == "T"]
    assert [(c.table, c.table_wide) for c in truncate] == [("public.notes", True)]
    lsns = [b.end_lsn for b in run.batches]
    assert lsns == sorted(lsns) and all(c.lsn is not None for c in run.changes)
    assert all(c.ts_us and abs(c.ts_us / 1e6 - time.time()) < 60 for c in run.changes)


async def test_a_product_moving_category_brings_the_old_and_the_new_category(
    wal_url: str, names: tuple[str, str]
) -> None:
    _execute(
        wal_url,
        "INSERT INTO products (id, category_id, name, price_cents, stock)"
        " VALUES (200, 1, 'm', 1, 1)",
    )
    async with streaming(wal_url, names) as run:
        _execute(wal_url, "UPDATE products SET category_id = 2 WHERE id = 200")
        _execute(wal_url, "INSERT INTO notes VALUES ('moved', '')")
        await run.until(_marker(run, "moved"))
    (move,) = [c for c in run.changes if c.table == "public.products" and c.op == "U"]
    assert move.rows[0].old == {"id": "200", "category_id": "1"}
    assert move.rows[0].new == {"id": "200", "category_id": "2"}
    tags = explain(DECLARATION, move)[0].tags
    assert {"category:1:pages", "category:2:pages"} <= tags


async def test_text_uuid_and_composite_keys_and_partitions_arrive_as_text_under_the_root(
    wal_url: str, names: tuple[str, str]
) -> None:
    device = str(uuid.uuid4())
    async with streaming(wal_url, names) as run:
        _execute(
            wal_url,
            "INSERT INTO notes VALUES ('a b/ü:{x}', 'body')",
            f"INSERT INTO devices VALUES ('{device}', 'ann')",
            f"UPDATE devices SET owner = 'bob' WHERE id = '{device}'",
            "INSERT INTO order_lines VALUES (7, 1, 'sku-1'), (7, 2, NULL)",
            "UPDATE order_lines SET sku = 'sku-2' WHERE order_id = 7 AND line_no = 2",
            "INSERT INTO events VALUES ('eu', 1, 'click'), ('us', 2, 'view')",
            "UPDATE events SET kind = 'tap' WHERE region = 'eu'",
            "UPDATE events SET region = 'us' WHERE id = 1",  # moves to the other partition
            "INSERT INTO notes VALUES ('keys-done', '')",
        )
        await run.until(_marker(run, "keys-done"))
    assert ("I", None, {"slug": "a b/ü:{x}"}) in _rows(run, "public.notes")
    assert _rows(run, "public.devices") == [
        ("I", None, {"id": device, "owner": "ann"}),
        ("U", {"id": device, "owner": "ann"}, {"id": device, "owner": "bob"}),
    ]
    assert _rows(run, "public.order_lines") == [
        ("I", None, {"order_id": "7", "line_no": "1", "sku": "sku-1"}),
        ("I", None, {"order_id": "7", "line_no": "2", "sku": None}),
        ("U", {"order_id": "7", "line_no": "2", "sku": None},
         {"order_id": "7", "line_no": "2", "sku": "sku-2"}),
    ]  # fmt: skip
    events = _rows(run, "public.events")
    assert events[:3] == [
        ("I", None, {"region": "eu", "id": "1", "kind": "click"}),
        ("I", None, {"region": "us", "id": "2", "kind": "view"}),
        (
            "U",
            {"region": "eu", "id": "1", "kind": "click"},
            {"region": "eu", "id": "1", "kind": "tap"},
        ),
    ]
    # a row moving between partitions is a delete from one and an insert into the other
    assert events[3:] == [
        ("D", {"region": "eu", "id": "1", "kind": "tap"}, None),
        ("I", None, {"region": "us", "id": "1", "kind": "tap"}),
    ]
    assert not any(c.table_wide for c in run.changes)
    assert {c.table for c in run.changes} <= set(DECLARATION.tables)


async def test_a_transaction_is_one_batch_and_a_rolled_back_one_delivers_nothing(
    wal_url: str, names: tuple[str, str]
) -> None:
    async with streaming(wal_url, names) as run:
        with psycopg.connect(wal_url) as conn:
            conn.execute("INSERT INTO notes SELECT 'bulk-' || i, '' FROM generate_series(1, 800) i")
            conn.execute("UPDATE notes SET body = 'x' WHERE slug LIKE 'bulk-%'")
            conn.commit()
            conn.execute("INSERT INTO notes VALUES ('rolled-back', '')")
            conn.execute("INSERT INTO products (id, category_id, name, price_cents, stock)"
                         " VALUES (300, 1, 'r', 1, 1)")  # fmt: skip
            conn.rollback()
        _execute(wal_url, "INSERT INTO notes VALUES ('after-rollback', '')")
        await run.until(_marker(run, "after-rollback"))
    bulk, after = run.batches
    # 1600 rows > max_rows (1000): one table-wide change, in one batch, never split
    assert [(c.table, c.table_wide) for c in bulk.changes] == [("public.notes", True)]
    assert _rows(run, "public.notes") == [("I", None, {"slug": "after-rollback"})]
    assert after.end_lsn > bulk.end_lsn


async def test_changes_not_confirmed_come_again_after_a_restart_and_confirmed_ones_do_not(
    wal_url: str, names: tuple[str, str]
) -> None:
    async with streaming(wal_url, names) as first:
        _execute(wal_url, "INSERT INTO notes VALUES ('once', '')")
        await first.until(_marker(first, "once"))
        delivered = first.batches[-1].end_lsn
        with psycopg.connect(wal_url, autocommit=True) as conn:
            # the source has told the server where it is since: still not past the delivery
            since = conn.execute("SELECT clock_timestamp()").fetchone()
            reply = "SELECT reply_time > %s FROM pg_stat_replication WHERE pid = %s"
            pid = first.source.backend_pid
            for _ in range(100):
                row = conn.execute(reply, (since[0] if since else None, pid)).fetchone()
                if row and row[0]:
                    break
                await asyncio.sleep(0.05)  # let the source run and report
            assert row and row[0], "no status update reached the server"
            assert _confirmed_flush(conn, names[0]) < delivered
    # the consumer died before Redis applied it: nothing was confirmed
    async with streaming(wal_url, names) as second:
        await second.until(_marker(second, "once"))
        assert second.source.slot_existed is True  # no flush needed: the slot kept it
        assert not any(isinstance(i, FlushRequest) for i in second.items)
        await second.confirm_all()
        confirmed = second.batches[-1].end_lsn
        with psycopg.connect(wal_url) as conn:
            assert _until_sync(lambda: _confirmed_flush(conn, names[0]) >= confirmed)
    async with streaming(wal_url, names) as third:
        _execute(wal_url, "INSERT INTO notes VALUES ('twice', '')")
        await third.until(_marker(third, "twice"))
    assert ("I", None, {"slug": "once"}) not in _rows(third, "public.notes")


def _confirmed_flush(conn: psycopg.Connection[Any], slot: str) -> int:
    status = wal.slot_status(conn, slot)
    assert status is not None and status.confirmed_flush_lsn is not None
    high, low = status.confirmed_flush_lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _setting(url: str, name: str) -> str:
    """A server setting as a new session sees it (a reload reaches the server asynchronously)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    return str(row[0]) if row else ""


def _until_sync(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


async def test_a_dropped_slot_is_recreated_with_a_flush_request_and_a_loud_log(
    wal_url: str, names: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="invalidator.wal_source")
    async with streaming(wal_url, names) as run:
        with psycopg.connect(wal_url, autocommit=True) as conn:
            assert wal.drop_slot(conn, names[0])  # ends the walsender, then drops
        await run.until(lambda: any(isinstance(i, FlushRequest) for i in run.items))
        _execute(wal_url, "INSERT INTO notes VALUES ('after-drop', '')")
        await run.until(_marker(run, "after-drop"))
    (flush,) = [i for i in run.items if isinstance(i, FlushRequest)]
    assert flush.kind == "slot_dropped"
    assert any("did not exist and was created" in r.getMessage() for r in caplog.records)


async def test_a_silent_replication_connection_is_detected_in_bounded_time_and_resumed_losslessly(
    wal_url: str, cluster: PostgresCluster, names: tuple[str, str]
) -> None:
    proxy = TcpProxy(cluster.port).start()
    via_proxy = wal_url.replace(f":{cluster.port}/", f":{proxy.port}/")
    try:
        async with streaming(via_proxy, names) as run:
            source = run.source
            assert proxy.silence() >= 1  # every open connection, the replication one included
            silenced_at = time.monotonic()
            _execute(wal_url, "INSERT INTO notes VALUES ('during-silence', '')")  # not via proxy
            await run.until(lambda: source.connections >= 2, within_s=FAST["timeout_s"] + 8)
            detected_s = time.monotonic() - silenced_at
            await run.until(_marker(run, "during-silence"))
        assert (
            detected_s < FAST["timeout_s"] + 5
        )  # deadline + reconnect (ending the stale walsender)
        assert not any(isinstance(i, FlushRequest) for i in run.items)  # nothing was missed
    finally:
        proxy.stop()


async def test_an_invalidated_slot_is_recreated_with_a_flush_request(
    wal_url: str, names: tuple[str, str]
) -> None:
    """max_slot_wal_keep_size: a slot that fell too far behind is lost; the source notices,
    recreates it and flushes (the changes in between are gone from the stream)."""
    with psycopg.connect(wal_url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        conn.execute("SELECT pg_reload_conf()")
        try:
            for _ in range(4):
                conn.execute(
                    "INSERT INTO notes SELECT 'fill-' || g || '-' || random(), repeat('y', 500)"
                    " FROM generate_series(1, 3000) g"
                )
                conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            assert _until_sync(lambda: (wal.slot_status(conn, names[0]) or _LOST).lost)
        finally:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")
    async with streaming(wal_url, names) as run:
        await run.until(lambda: any(isinstance(i, FlushRequest) for i in run.items))
        _execute(wal_url, "INSERT INTO notes VALUES ('after-loss', '')")
        await run.until(_marker(run, "after-loss"))
    assert [i.kind for i in run.items if isinstance(i, FlushRequest)] == ["slot_lost"]


_LOST = wal.SlotStatus("", "", "", False, None, None, None, "lost", None)


def test_upgrade_in_wal_mode_publishes_the_declaration_and_notify_mode_drops_the_slot(
    wal_url: str, tmp_path: Path
) -> None:
    name = f"u_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(wal_url, autocommit=True) as conn:
        setup = wal.ensure(conn, name, name, DECLARATION.tables)
        assert setup.created_slot
        assert not wal.ensure(conn, name, name, DECLARATION.tables).created_slot  # idempotent
        assert set(wal.published_tables(conn, name)) == set(DECLARATION.tables)
        assert wal.tables_without_full_identity(conn, DECLARATION.tables) == []
        identities = conn.execute(
            "SELECT relname, relreplident FROM pg_class WHERE relname LIKE 'events%%'"
            " AND relkind IN ('r', 'p') ORDER BY 1"
        ).fetchall()
        assert identities == [("events", "f"), ("events_eu", "f"), ("events_us", "f")]
        assert setup.warnings and "max_slot_wal_keep_size" in setup.warnings[0]
        assert wal.remove(conn, name, name) == (True, True)
        assert wal.slot_status(conn, name) is None and wal.published_tables(conn, name) == []
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM pg_publication WHERE pubname = {}").format(
                sql.Literal(name)
            )
        ).fetchone()
        assert row == (0,)


async def test_the_daemon_in_wal_mode_catches_up_after_a_restart_without_an_epoch_bump(
    wal_url: str,
    names: tuple[str, str],
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An UPDATE committed while no invalidator ran is invalidated once one runs again, and
    the restart empties nothing: the slot kept the change."""
    settings = _wal_daemon_settings(wal_url, names, redis_server, tmp_path, monkeypatch)
    _execute(
        wal_url,
        "INSERT INTO products (id, category_id, name, price_cents, stock)"
        " VALUES (400, 3, 'd', 1, 1)",
    )
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    cache = RedisCache(client, Keyspace(settings.namespace))

    async def fill() -> None:
        lease = await cache.get_or_lease("product:400", tags=demo_tags("product:400"))
        assert isinstance(lease, Lease)
        assert (
            await cache.fill(
                "product:400",
                lease.token,
                lease.stamp,
                b"{}",
                rows=(),
                since=lease.since,
                tags=demo_tags("product:400"),
            )
            == 1
        )

    async def gone() -> bool:
        return await cache.peek("product:400", tags=demo_tags("product:400")) is None

    async def wait_gone() -> None:
        deadline = time.monotonic() + 10
        while not await gone():
            assert time.monotonic() < deadline, "product:400 was not invalidated"
            await asyncio.sleep(0.01)

    def bumps(daemon: Invalidator) -> float:
        registry = daemon.metrics.registry
        return sum(
            s.value
            for m in registry.collect()
            if m.name == "pgbust_invalidator_epoch_bumps"
            for s in m.samples
            if s.name.endswith("_total")
        )

    async def live(daemon: Invalidator) -> None:
        """Capture proven through the slot (the probes come back as logical messages)."""
        deadline = time.monotonic() + 10
        while not daemon.capture_live:
            assert time.monotonic() < deadline, "capture never became live in wal mode"
            await asyncio.sleep(0.01)

    try:
        first = Invalidator(settings, serve_http=False)
        task = asyncio.create_task(first.run())
        await live(first)
        await fill()
        _execute(wal_url, "UPDATE products SET stock = stock + 1 WHERE id = 400")
        await wait_gone()
        assert first.health()[1]["capture_mode"] == "wal"
        await fill()  # cached again, then nobody runs
        first.stop()
        await asyncio.wait_for(task, 15)

        _execute(wal_url, "UPDATE products SET stock = stock + 1 WHERE id = 400")  # nobody runs
        value = cache.keyspace.value("product:400")
        assert await client.exists(value), "precondition: the old value is still in Redis"
        second = Invalidator(settings, serve_http=False)
        task = asyncio.create_task(second.run())
        await live(second)
        # by the time readers may use Redis again, the change made meanwhile is applied
        assert not await client.exists(value)
        assert bumps(first) == 0 and bumps(second) == 0  # nothing could be missed: no flush
        second.stop()
        await asyncio.wait_for(task, 15)
    finally:
        await client.aclose()


async def test_the_daemon_in_wal_mode_keeps_its_term_live_past_the_give_up_deadline(
    wal_url: str,
    names: tuple[str, str],
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The probes through the slot prove the replication stream alive: an active instance
    whose stream works never gives its leadership up (it did every PGBUST_GIVE_UP_AFTER_S
    while the stream was not counted as the capture channel), and its term stays the first."""
    settings = _wal_daemon_settings(
        wal_url, names, redis_server, tmp_path, monkeypatch, heartbeat_s=0.1, give_up_after_s=0.5
    )
    daemon = Invalidator(settings, serve_http=False)
    task = asyncio.create_task(daemon.run())
    try:
        deadline = time.monotonic() + 10
        while not daemon.capture_live:
            assert time.monotonic() < deadline, "capture never became live in wal mode"
            assert not task.done(), task
            await asyncio.sleep(0.01)
        # watched for 6 give-up deadlines: live all along, one term, no give-up
        watch_until = time.monotonic() + 6 * settings.give_up_after_s
        while time.monotonic() < watch_until:
            status, body = daemon.health()
            assert daemon.capture_live and daemon.terms == 1, body
            assert status == 200 and body["capture"]["problems"] == [], body
            await asyncio.sleep(0.02)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)


async def test_a_commit_in_the_wal_but_not_yet_visible_is_invalidated_once_readers_see_it(
    wal_url: str,
    names: tuple[str, str],
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit is in the WAL, and decoded, before other sessions can see it: here it waits
    for a synchronous standby that never answers (on a busy server the gap is a preempted
    backend's few milliseconds). Invalidated at once, the entry would be refilled with the old
    row by the next reader, for good; so it stays while the old row is what readers see, and
    goes as soon as the commit is visible."""
    settings = _wal_daemon_settings(wal_url, names, redis_server, tmp_path, monkeypatch)
    _execute(
        wal_url,
        "INSERT INTO products (id, category_id, name, price_cents, stock)"
        " VALUES (500, 3, 'v', 1, 1)",
    )
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    cache = RedisCache(client, Keyspace(settings.namespace))
    daemon = Invalidator(settings, serve_http=False)
    task = asyncio.create_task(daemon.run())
    writer: threading.Thread | None = None
    try:
        deadline = time.monotonic() + 10
        while not daemon.capture_live:
            assert time.monotonic() < deadline, "capture never became live in wal mode"
            await asyncio.sleep(0.01)
        lease = await cache.get_or_lease("product:500", tags=demo_tags("product:500"))
        assert isinstance(lease, Lease)
        stored = await cache.fill(
            "product:500",
            lease.token,
            lease.stamp,
            b'{"stock":1}',
            rows=(),
            since=lease.since,
            tags=demo_tags("product:500"),
        )
        assert stored == 1
        received = daemon.metrics.wal_transactions._value.get()
        # every commit waits for the standby 'nobody'; the daemon's own sessions do not
        _execute(
            wal_url,
            "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
            "ALTER SYSTEM SET synchronous_commit = 'local'",
            "SELECT pg_reload_conf()",
        )
        assert _until_sync(lambda: _setting(wal_url, "synchronous_standby_names") == "nobody")
        writer = threading.Thread(
            target=_execute,
            args=(
                wal_url,
                "SET synchronous_commit = on",
                "UPDATE products SET stock = 2 WHERE id = 500",
            ),
        )
        writer.start()
        with psycopg.connect(wal_url, autocommit=True) as conn:
            waiting = "SELECT application_name FROM pg_stat_activity WHERE wait_event='SyncRep'"
            assert _until_sync(lambda: len(conn.execute(waiting).fetchall()) >= 1)
            assert [r[0] for r in conn.execute(waiting).fetchall()] == [""], "only the writer"
            row = conn.execute("SELECT stock FROM products WHERE id = 500").fetchone()
            assert row == (1,), "precondition: readers do not see the commit yet"
        deadline = time.monotonic() + 10
        while daemon.metrics.wal_transactions._value.get() <= received:
            assert time.monotonic() < deadline, "the commit never came through the slot"
            await asyncio.sleep(0.01)
        # decoded, not visible: for as long as readers see the old row, its entry stays
        watch_until = time.monotonic() + 1.0
        while time.monotonic() < watch_until:
            assert await cache.peek("product:500", tags=demo_tags("product:500")) is not None, (
                "invalidated before visible"
            )
            await asyncio.sleep(0.02)
        _execute(
            wal_url,
            "ALTER SYSTEM RESET synchronous_standby_names",
            "ALTER SYSTEM RESET synchronous_commit",
            "SELECT pg_reload_conf()",
        )
        writer.join(10)  # the standby is no longer waited for
        assert not writer.is_alive(), "the commit still waits"
        deadline = time.monotonic() + 10
        while await cache.peek("product:500", tags=demo_tags("product:500")) is not None:
            assert time.monotonic() < deadline, "not invalidated once visible"
            await asyncio.sleep(0.01)
    finally:
        _execute(
            wal_url,
            "ALTER SYSTEM RESET synchronous_standby_names",
            "ALTER SYSTEM RESET synchronous_commit",
            "SELECT pg_reload_conf()",
        )
        if writer is not None:
            writer.join(10)
        daemon.stop()
        await asyncio.wait_for(task, 15)
        await client.aclose()


async def test_a_replication_connection_terminated_again_and_again_is_resumed_at_once_each_time(
    wal_url: str, names: tuple[str, str]
) -> None:
    """The reconnect back-off counts failures in a row, not in the process's life: a stream
    that worked until its walsender was terminated is resumed within a fraction of a second,
    the eighth time as the first (it waited up to PGBUST's retry maximum, here 5 s, once a
    few terminations had added up), and nothing is lost on the way."""
    async with streaming(wal_url, names, retry_max_s=5.0) as run:
        source = run.source
        for round_ in range(8):
            before = source.connections
            with psycopg.connect(wal_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (names[0],),
                )
            started = time.monotonic()
            _execute(wal_url, f"INSERT INTO notes VALUES ('term-{round_}', '')")
            await run.until(lambda: source.connections > before, within_s=10)
            assert time.monotonic() - started < 2.5, f"resumed only after a back-off ({round_})"
            await run.until(_marker(run, f"term-{round_}"))
    assert not any(isinstance(i, FlushRequest) for i in run.items)  # resumed: nothing missed
