"""WAL capture benchmarks, on a private wal_level=logical cluster started for the run:

- pgbench single-row UPDATE TPS at 1, 8 and 32 clients with no capture, NOTIFY triggers and
  WAL capture (a WalSource consuming and confirming the slot meanwhile), side by side;
- WAL bytes per single-row UPDATE under REPLICA IDENTITY DEFAULT, USING INDEX, FULL;
- decode throughput: pgoutput bytes -> Changes (decoder + mapping, one core, no I/O);
- receive throughput of the two consumers psycopg 3 COPY_BOTH (ours) and psycopg2's
  LogicalReplicationConnection (when psycopg2 is installed; not a project dependency);
- commit acknowledged -> change decoded by the source, at 1,000 writes/s, p50 / p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import psycopg

from bench import report
from bench.cluster import logical_cluster
from bench.invalidator import PRODUCTS, UPDATE_SCRIPT, pgbench, steady_writer
from bench.scratch import scratch_database
from db import capture, wal
from invalidator.metrics import Metrics
from invalidator.replication import ReplicationStream, XLogData
from invalidator.wal_source import WalBatch, WalItem, WalSource
from pgbust import declaration as declaration_file
from pgbust import pgoutput
from pgbust.wal_changes import Transactions

SLOT = "bench"
IDENTITY_SQL = {
    "default": "ALTER TABLE products REPLICA IDENTITY DEFAULT",
    "index": "DROP INDEX IF EXISTS bench_ri;"
    " CREATE UNIQUE INDEX bench_ri ON products (id, category_id);"
    " ALTER TABLE products REPLICA IDENTITY USING INDEX bench_ri",
    "full": "DROP INDEX IF EXISTS bench_ri; ALTER TABLE products REPLICA IDENTITY FULL",
}  # fmt: skip


def _conn(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True)


def _updates(conn: psycopg.Connection[tuple[Any, ...]], ids: list[int]) -> None:
    """One single-row UPDATE transaction per id, pipelined (a Sync after each: one commit)."""
    with conn.pipeline() as pipeline:
        for product_id in ids:
            conn.execute("UPDATE products SET stock = stock + 1 WHERE id = %s", (product_id,))
            pipeline.sync()


# --- 1. write overhead ---------------------------------------------------------------------


def _consume_forever(url: str) -> None:
    """A WalSource streaming the slot and confirming every batch at once (in its own process,
    as the invalidator would run: the writers' machine pays for it)."""

    async def main() -> None:
        queue: asyncio.Queue[WalItem] = asyncio.Queue()
        source = WalSource(url, SLOT, SLOT, declaration_file.load(), queue, Metrics())
        task = asyncio.create_task(source.run())
        while True:
            item = await queue.get()
            if isinstance(item, WalBatch):
                await source.confirm(item.end_lsn)
        await task

    asyncio.run(main())


async def _with_consumer(url: str, coro: Any) -> Any:
    process = get_context("spawn").Process(target=_consume_forever, args=(url,), daemon=True)
    process.start()
    try:
        await asyncio.sleep(2.0)  # started and streaming
        return await coro
    finally:
        process.kill()
        process.join(10)


async def write_overhead(
    url: str, script: Path, clients_list: list[int], seconds: float, repeats: int
) -> list[dict[str, Any]]:
    await pgbench(url, script, 8, 2)  # warm-up
    rows = []
    for clients in clients_list:
        row: dict[str, Any] = {"clients": clients}
        for _ in range(repeats):
            for mode in ("none", "notify", "wal"):
                with _conn(url) as conn:
                    if mode == "notify":
                        capture.install(conn)
                    else:
                        capture.remove(conn)
                    # FULL costs WAL only for WAL capture: the others run as they would
                    conn.execute(IDENTITY_SQL["full" if mode == "wal" else "default"].encode())
                print(f"bench wal: {mode} at {clients} clients", file=sys.stderr, flush=True)
                run = pgbench(url, script, clients, seconds)
                tps = await (_with_consumer(url, run) if mode == "wal" else run)
                row[mode] = max(row.get(mode, 0), round(tps))
        row["notify_ratio"] = round(row["notify"] / row["none"], 3)
        row["wal_ratio"] = round(row["wal"] / row["none"], 3)
        rows.append(row)
    return rows


# --- 2. WAL bytes per UPDATE ---------------------------------------------------------------


def wal_bytes_per_update(url: str, updates: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with _conn(url) as conn:
        for identity, statement in IDENTITY_SQL.items():
            conn.execute(statement.encode())
            conn.execute("CHECKPOINT")  # full-page writes alike for every identity
            row = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
            assert row is not None
            _updates(conn, [1 + (i * 7919) % PRODUCTS for i in range(updates)])
            after = conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", row).fetchone()
            assert after is not None
            out[identity] = round(float(after[0]) / updates, 1)
        conn.execute(IDENTITY_SQL["full"].encode())
    return out


# --- 3. decode throughput ------------------------------------------------------------------


def _recorded_messages(url: str, transactions: int) -> list[bytes]:
    with _conn(url) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('bench_decode', 'pgoutput')")
        try:
            _updates(conn, [1 + i % PRODUCTS for i in range(transactions)])
            rows = conn.execute(
                "SELECT data FROM pg_logical_slot_get_binary_changes('bench_decode', NULL, NULL,"
                " 'proto_version', '1', 'publication_names', %s)",
                (SLOT,),
            ).fetchall()
        finally:
            conn.execute("SELECT pg_drop_replication_slot('bench_decode')")
    return [bytes(r[0]) for r in rows]


def decode_throughput(messages: list[bytes]) -> dict[str, Any]:
    declaration = declaration_file.load()
    best = None
    for _ in range(3):
        assembler = Transactions(declaration)
        changes = rows = 0
        started = time.perf_counter()
        for data in messages:
            done = assembler.feed(pgoutput.decode(data))
            if done is not None:
                changes += len(done.changes)
                rows += done.rows
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
    assert best is not None
    return {
        "messages": len(messages),
        "row_changes": rows,
        "seconds": round(best, 3),
        "messages_per_s": round(len(messages) / best),
        "row_changes_per_s": round(rows / best),
    }


# --- 4. receive throughput of the two consumers --------------------------------------------


async def _receive_psycopg3(url: str, slot: str, commits: int) -> float:
    stream = await ReplicationStream.start(url, "bench", slot, SLOT)
    seen = 0
    started = time.perf_counter()
    try:
        while seen < commits:
            for frame in await stream.read(1.0):
                if isinstance(frame, XLogData) and frame.payload[:1] == b"C":
                    seen += 1
                    pgoutput.decode(frame.payload)
    finally:
        await stream.close()
    return time.perf_counter() - started


def _receive_psycopg2(url: str, slot: str, commits: int) -> float | None:
    try:
        import psycopg2  # type: ignore[import-untyped, unused-ignore]
        import psycopg2.extras  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return None
    conn = psycopg2.connect(url, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    cur.start_replication(
        slot_name=slot, decode=False, options={"proto_version": "1", "publication_names": SLOT}
    )
    seen = 0
    started = time.perf_counter()
    done = threading.Event()

    def consume(msg: Any) -> None:
        nonlocal seen
        if msg.payload[:1] == b"C":
            seen += 1
            pgoutput.decode(msg.payload)
            if seen >= commits:
                done.set()
                raise StopIteration

    with contextlib.suppress(StopIteration):
        cur.consume_stream(consume)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


async def consumer_throughput(url: str, commits: int) -> dict[str, Any]:
    out: dict[str, Any] = {"transactions": commits}
    with _conn(url) as conn:
        for name in ("bench_p3", "bench_p2"):
            wal.create_slot(conn, name)
        _updates(conn, [1 + i % PRODUCTS for i in range(commits)])
    try:
        p3 = await _receive_psycopg3(url, "bench_p3", commits)
        out["psycopg3_copy_both_tx_per_s"] = round(commits / p3)
        p2 = await asyncio.to_thread(_receive_psycopg2, url, "bench_p2", commits)
        out["psycopg2_logical_replication_tx_per_s"] = None if p2 is None else round(commits / p2)
    finally:
        with _conn(url) as conn:
            for name in ("bench_p3", "bench_p2"):
                wal.drop_slot(conn, name)
    return out


# --- 5. commit acknowledged -> decoded -----------------------------------------------------


async def ack_to_decoded(url: str, rate: int, seconds: float) -> dict[str, Any]:
    queue: asyncio.Queue[WalItem] = asyncio.Queue()
    source = WalSource(url, SLOT, SLOT, declaration_file.load(), queue, Metrics())
    task = asyncio.create_task(source.run())
    received: dict[int, list[int]] = {}
    collecting = True

    async def collect() -> None:
        while collecting or not queue.empty():
            try:
                item = await asyncio.wait_for(queue.get(), 0.5)
            except TimeoutError:
                continue
            if isinstance(item, WalBatch):
                now = time.time_ns() // 1000
                for change in item.changes:
                    for row in change.rows:
                        if row.new is not None and row.new.get("id"):
                            received.setdefault(int(str(row.new["id"])), []).append(now)
                await source.confirm(item.end_lsn)

    collector = asyncio.create_task(collect())
    loop = asyncio.get_running_loop()
    writers = max(1, rate // 200)
    try:
        while not source.connected:  # noqa: ASYNC110 - a plain flag of the source
            await asyncio.sleep(0.05)
        start_at = time.time() + 5.0
        with ProcessPoolExecutor(writers, mp_context=get_context("spawn")) as pool:
            futures = [
                loop.run_in_executor(pool, steady_writer, url, rate / writers, start_at, seconds, i)
                for i in range(writers)
            ]
            parts = await asyncio.gather(*futures)
        await asyncio.sleep(0.5)
    finally:
        collecting = False
        await collector
        task.cancel()
        # bounded: a cancelled source that does not end is reported, not waited for forever
        _, stuck = await asyncio.wait({task}, timeout=5)
        if stuck:
            print("bench wal: the WalSource did not stop within 5 s", file=sys.stderr)
    writes = [w for part in parts for w in part]
    lags = []
    for product_id, sent, acked in writes:
        after = [r for r in received.get(product_id, []) if r > sent]
        if after:
            lags.append((min(after) - acked) / 1000)
    return {
        "target_writes_per_s": rate,
        "achieved_writes_per_s": round(len(writes) / seconds),
        "decoded": len(lags),
        "ack_to_decoded_ms": report.percentiles(lags),
    }


# --- entry point ---------------------------------------------------------------------------


def _table(data: dict[str, Any]) -> str:
    md = "### Write overhead: pgbench single-row UPDATE TPS (private wal_level=logical cluster)\n\n"
    md += report.markdown_table(
        ["clients", "no capture", "notify triggers", "notify ratio", "wal", "wal ratio"],
        [
            [r["clients"], r["none"], r["notify"], r["notify_ratio"], r["wal"], r["wal_ratio"]]
            for r in data["overhead"]
        ],
    )
    md += "\n### WAL bytes per single-row UPDATE of products, by replica identity\n\n"
    md += report.markdown_table(
        ["DEFAULT (primary key)", "USING INDEX (id, category_id)", "FULL"],
        [[data["wal_bytes_per_update"][k] for k in ("default", "index", "full")]],
    )
    d = data["decode"]
    md += "\n### Decode throughput: pgoutput bytes -> Changes (one core, no I/O)\n\n"
    md += report.markdown_table(
        ["messages", "row changes", "seconds", "messages/s", "row changes/s"],
        [[d["messages"], d["row_changes"], d["seconds"], d["messages_per_s"],
          d["row_changes_per_s"]]],
    )  # fmt: skip
    c = data["consumers"]
    md += "\n### Receive + decode throughput of the two consumers (single-row transactions)\n\n"
    md += report.markdown_table(
        ["transactions", "psycopg 3 COPY_BOTH (tx/s)", "psycopg2 LogicalReplicationConnection"],
        [[c["transactions"], c["psycopg3_copy_both_tx_per_s"],
          c["psycopg2_logical_replication_tx_per_s"] or "not installed"]],
    )  # fmt: skip
    lat = data["latency"]
    p = lat["ack_to_decoded_ms"]
    md += "\n### Commit acknowledged -> change decoded by the source, ms\n\n"
    md += report.markdown_table(
        ["writes/s target", "achieved", "decoded", "p50", "p99", "max"],
        [[lat["target_writes_per_s"], lat["achieved_writes_per_s"], lat["decoded"],
          p["p50"], p["p99"], p["max"]]],
    )  # fmt: skip
    load = data["load_average_1m"]
    md += f"\n1-minute load average on {os.cpu_count()} cores: {load['start']} at the start, "
    md += f"{load['end']} at the end (the machine is shared).\n"
    return md


async def _run(quick: bool) -> dict[str, Any]:
    seconds = 3.0 if quick else 8.0
    load_before = round(os.getloadavg()[0], 2)
    with logical_cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "update.sql"
        script.write_text(UPDATE_SCRIPT)
        with scratch_database(cluster.admin_url, PRODUCTS) as url:
            with _conn(url) as conn:
                wal.ensure(conn, SLOT, SLOT, list(declaration_file.load().tables))
            print("bench wal: wal_bytes", file=sys.stderr, flush=True)
            wal_bytes = wal_bytes_per_update(url, 2000 if quick else 10000)
            print("bench wal: decode", file=sys.stderr, flush=True)
            decode = decode_throughput(_recorded_messages(url, 5000 if quick else 30000))
            print("bench wal: consumers", file=sys.stderr, flush=True)
            consumers = await consumer_throughput(url, 5000 if quick else 20000)
            print("bench wal: latency", file=sys.stderr, flush=True)
            latency = await ack_to_decoded(url, 1000, seconds)
            print("bench wal: overhead", file=sys.stderr, flush=True)
            overhead = await write_overhead(
                url, script, [1, 8, 32], seconds, repeats=1 if quick else 2
            )
            with _conn(url) as conn:
                wal.remove(conn, SLOT, SLOT)
    return {
        "quick": quick,
        "seconds_per_run": seconds,
        "load_average_1m": {"start": load_before, "end": round(os.getloadavg()[0], 2)},
        "overhead": overhead,
        "wal_bytes_per_update": wal_bytes,
        "decode": decode,
        "consumers": consumers,
        "latency": latency,
    }


def run(out: Path, quick: bool) -> None:
    data = asyncio.run(_run(quick))
    report.write(out, "wal", data, _table(data))
    print(_table(data))
