"""Invalidator benchmarks: commit -> Redis-delete lag at steady write rates, raw event
throughput of parse + rules + batching, and the write overhead of the capture triggers.

Runs against a scratch database on DATABASE_URL's server (created, seeded with 100k products,
dropped at the end) and a private namespace on REDIS_URL. Writers are pgbench processes; the
invalidator runs in this process and reports each applied batch through its `on_applied` hook.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import orjson
import psycopg

from bench import pgbench as pgbench_cli
from bench import report
from bench.cluster import logical_cluster
from bench.scratch import scratch_database
from db import capture
from invalidator.app import Invalidator
from invalidator.batcher import Batch
from invalidator.payload import parse
from invalidator.settings import Settings
from pgbust import declaration

PRODUCTS = 100_000
UPDATE_SCRIPT = (
    "\\set id random(1, 100000)\nUPDATE products SET stock = stock + 1 WHERE id = :id;\n"
)
# A reference point: the naive design, one pg_notify per row from a FOR EACH ROW trigger.
ROW_TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION pgbust.bench_row_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgbust_bench_rows', json_build_object(
        't', TG_TABLE_NAME, 'op', TG_OP, 'id', NEW.id, 'category_id', NEW.category_id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_row_notify AFTER UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION pgbust.bench_row_notify();
"""
DROP_ROW_TRIGGER_SQL = "DROP TRIGGER IF EXISTS bench_row_notify ON products"
# N distinct single-row payloads, notified in one transaction (so delivered as one burst).
# Key values as the capture sends them, text: a number would be unkeyable, and every batch
# a flush instead of its keys' invalidation.
BURST_SQL = """
SELECT count(pg_notify('pgbust_changes', json_build_object(
    'v', 2, 't', 'public.products', 'op', 'U',
    'ts', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
    'c', json_build_array('id', 'category_id'),
    'r', json_build_array(json_build_array(g::text, (1 + mod(g, 20))::text)))::text))
FROM generate_series(1, %(events)s) g
"""


# --- scratch database ----------------------------------------------------------------------


# --- pgbench -------------------------------------------------------------------------------


async def pgbench(
    url: str,
    script: Path,
    clients: int,
    seconds: float,
    rate: int | None = None,
    options: str | None = None,
) -> float:
    env = {**os.environ, "PGOPTIONS": options} if options else None
    proc = await asyncio.create_subprocess_exec(
        *pgbench_cli.command(url, script, clients, seconds, rate),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return pgbench_cli.tps(out.decode(errors="replace"))


# --- 1. throughput of the pure path --------------------------------------------------------


def _payloads(n: int) -> list[str]:
    rng = random.Random(7)
    out = []
    for _ in range(n):
        rows = [
            [str(rng.randint(1, PRODUCTS)), str(rng.randint(1, 20))]
            for _ in range(rng.choice((1, 1, 1, 2)))
        ]
        body = {"v": 2, "t": "public.products", "op": "U", "ts": time.time_ns() // 1000,
                "c": ["id", "category_id"], "r": rows}  # fmt: skip
        out.append(orjson.dumps(body).decode())
    return out


def throughput(events: int, batch_max: int = 2000) -> dict[str, Any]:
    payloads = _payloads(events)
    declared = declaration.load()
    started = time.perf_counter()
    batches = 0
    batch = Batch()
    for raw in payloads:
        batch.add(parse(raw), declared)
        if len(batch) >= batch_max:
            batch.targets()
            batches += 1
            batch = Batch()
    batch.targets()
    elapsed = time.perf_counter() - started
    return {"events": events, "seconds": round(elapsed, 3), "events_per_s": round(events / elapsed)}


# --- 2. commit -> delete lag at steady rates -----------------------------------------------


def steady_writer(url: str, rate: float, start_at: float, seconds: float, seed_: int) -> list[Any]:
    """One writer process: single-row UPDATEs at a steady rate (open loop, like pgbench -R).

    Returns (product_id, sent_us, acked_us) per write; acked = COMMIT returned to the client.
    """
    rng = random.Random(seed_)
    out: list[tuple[int, int, int]] = []
    interval = 1.0 / rate
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT 1")
        while time.time() < start_at:
            time.sleep(0.001)
        next_at = time.monotonic()
        stop_at = next_at + seconds
        while next_at < stop_at and time.monotonic() < stop_at:  # behind schedule: stop anyway
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            product_id = rng.randint(1, PRODUCTS)
            sent = time.time_ns() // 1000
            conn.execute(
                "UPDATE products SET stock = stock + 1 WHERE id = %s", (product_id,), prepare=True
            )
            out.append((product_id, sent, time.time_ns() // 1000))
            next_at += interval
    return out


def _ack_lags(writes: list[tuple[int, int, int]], deleted: dict[int, list[int]]) -> list[float]:
    """Acknowledged commit -> key deleted, per write (negative: deleted before the ack came)."""
    lags = []
    for product_id, sent, acked in writes:
        done = [d for d in deleted.get(product_id, []) if d > sent]
        if done:
            lags.append((min(done) - acked) / 1000)
    return lags


async def lag_at_rates(
    url: str,
    redis_url: str,
    rates: list[int],
    seconds: float,
    *,
    capture: Literal["notify", "wal"] = "notify",
    namespace: str | None = None,
    **settings: Any,
) -> list[dict[str, Any]]:
    """capture="wal": the namespace's slot and publication must be in place. `settings`: more
    invalidator settings (redis_cluster=True, celery_broker_url=...)."""
    trigger_lags_ms: list[float] = []
    daemon_ms: list[float] = []
    deleted: dict[int, list[int]] = {}
    collecting = False

    def on_applied(batch: Batch, done_us: int) -> None:
        if not collecting:
            return
        trigger_lags_ms.extend((done_us - ts) / 1000 for ts in batch.timestamps)
        if batch.opened_us is not None:
            daemon_ms.append((done_us - batch.opened_us) / 1000)
        for key in batch.keys:
            if not key.startswith("product:"):
                continue
            deleted.setdefault(int(key.rsplit(":", 1)[1]), []).append(done_us)

    daemon = Invalidator(
        Settings(
            database_url=url,
            redis_url=redis_url,
            namespace=namespace or f"bench{uuid.uuid4().hex[:8]}",
            lock_id=random.randint(1, 2**40),
            warm_top=0,
            capture=capture,
            **settings,
        ),
        on_applied=on_applied,
        serve_http=False,
    )
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.started.wait(), 20)
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    results = []
    try:
        for rate in rates:
            writers = max(1, min(12, rate // 200))  # open loop: enough writers in flight
            trigger_lags_ms.clear()
            daemon_ms.clear()
            deleted.clear()
            batches_before = _batches(daemon)
            start_at = time.time() + 5.0  # writers are spawned processes: let them start
            with ProcessPoolExecutor(writers, mp_context=get_context("spawn")) as pool:
                futures = [
                    loop.run_in_executor(
                        pool, steady_writer, url, rate / writers, start_at, seconds, i
                    )
                    for i in range(writers)
                ]
                collecting = True
                parts = await asyncio.gather(*futures)
            await asyncio.sleep(0.3)  # let the last notifications drain
            collecting = False
            writes = [w for part in parts for w in part]
            results.append(
                {
                    "target_writes_per_s": rate,
                    "writer_processes": writers,
                    "achieved_writes_per_s": round(len(writes) / seconds),
                    "writer_commit_ms": report.percentiles([(a - s) / 1000 for _, s, a in writes]),
                    "events": len(trigger_lags_ms),
                    "batches": int(_batches(daemon) - batches_before),
                    "trigger_to_delete_ms": report.percentiles(trigger_lags_ms),
                    "ack_to_delete_ms": report.percentiles(_ack_lags(writes, deleted)),
                    "daemon_batch_ms": report.percentiles(daemon_ms),
                }
            )
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)
    return results


async def end_to_end_throughput(
    url: str, redis_url: str, events: int, **settings: Any
) -> dict[str, Any]:
    """Feed `events` distinct notifications in one transaction (delivered as one burst at
    COMMIT) and time until the daemon has applied all of them to Redis. `settings`: more
    invalidator settings (redis_cluster=True, celery_broker_url=...)."""
    daemon = Invalidator(
        Settings(
            database_url=url,
            redis_url=redis_url,
            namespace=f"bench{uuid.uuid4().hex[:8]}",
            lock_id=random.randint(1, 2**40),
            warm_top=0,
            **settings,
        ),
        serve_http=False,
    )
    task = asyncio.create_task(daemon.run())
    registry = daemon.metrics.registry
    try:
        await asyncio.wait_for(daemon.started.wait(), 20)
        await asyncio.sleep(0.5)
        flushes_before = _flushes(daemon)  # its start's flushes are not the burst's
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async with conn:
            await conn.execute(BURST_SQL, {"events": events})
        committed = time.perf_counter()
        label = {"table": "public.products"}
        while (registry.get_sample_value("pgbust_invalidator_events_total", label) or 0) < events:
            await asyncio.sleep(0.005)
            if time.perf_counter() - committed > 120:
                break
        elapsed = time.perf_counter() - committed
        seen = registry.get_sample_value("pgbust_invalidator_events_total", label) or 0
        batches = _batches(daemon)
        flushes = _flushes(daemon) - flushes_before
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)
    return {
        "events": int(seen),
        "seconds": round(elapsed, 3),
        "events_per_s": round(seen / elapsed),
        "batches": int(batches),
        # 0 unless something went wide meanwhile (a topology flush, a bad payload): then
        # the burst timed flushes, not its keys' invalidation
        "flushes": int(flushes),
    }


def _batches(daemon: Invalidator) -> float:
    return daemon.metrics.registry.get_sample_value("pgbust_invalidator_batches_total") or 0.0


def _flushes(daemon: Invalidator) -> float:
    (family,) = daemon.metrics.epoch_bumps.collect()
    return sum(s.value for s in family.samples if s.name.endswith("_total"))


# --- 3. write overhead of the triggers -----------------------------------------------------


async def _set_capture(url: str, mode: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(DROP_ROW_TRIGGER_SQL)
        if mode == "capture":
            capture.install(conn)
        else:
            capture.remove(conn)
        if mode == "row_notify":
            conn.execute(ROW_TRIGGER_SQL)


async def trigger_overhead(
    url: str, clients_list: list[int], seconds: float, script: Path, repeats: int
) -> list[dict[str, Any]]:
    """Best of `repeats` runs per configuration (the machine is shared: best = least disturbed)."""
    await pgbench(url, script, 8, 2)  # warm-up: caches, connections
    configs = [
        ("tps_without_triggers", "none", None),
        ("tps_with_capture", "capture", None),
        ("tps_row_level_notify_reference", "row_notify", None),
        ("tps_capture_synchronous_commit_off", "capture", "-c synchronous_commit=off"),
    ]
    rows = []
    for clients in clients_list:
        row: dict[str, Any] = {"clients": clients}
        for _ in range(repeats):
            for name, mode, options in configs:
                await _set_capture(url, mode)
                tps = await pgbench(url, script, clients, seconds, options=options)
                row[name] = max(row.get(name, 0), round(tps))
        row["ratio"] = round(row["tps_with_capture"] / row["tps_without_triggers"], 3)
        rows.append(row)
    await _set_capture(url, "capture")
    return rows


# --- entry point ---------------------------------------------------------------------------


def _table(data: dict[str, Any]) -> str:
    thr = data["throughput"]
    md = "### Commit -> key deleted in Redis, ms\n\n"
    md += "trigger = the writer's statement (clock_timestamp() in the trigger) -> Redis call "
    md += "returned; ack = COMMIT returned to the writer -> Redis call returned.\n\n"
    md += report.markdown_table(
        ["writes/s target", "achieved", "writer commit p50", "batches",
         "trigger p50", "trigger p99", "trigger max", "ack p50", "ack p99", "ack max"],
        [
            [
                r["target_writes_per_s"],
                r["achieved_writes_per_s"],
                r["writer_commit_ms"]["p50"],
                r["batches"],
                r["trigger_to_delete_ms"]["p50"],
                r["trigger_to_delete_ms"]["p99"],
                r["trigger_to_delete_ms"]["max"],
                r["ack_to_delete_ms"]["p50"],
                r["ack_to_delete_ms"]["p99"],
                r["ack_to_delete_ms"]["max"],
            ]
            for r in data["lag"]
        ],
    )  # fmt: skip
    md += "\nInside the daemon (batch taken from the queue -> Redis call returned), ms: "
    md += ", ".join(
        f"{r['target_writes_per_s']}/s p50 {r['daemon_batch_ms']['p50']} "
        f"p99 {r['daemon_batch_ms']['p99']}"
        for r in data["lag"]
    )
    md += ".\n"
    load = data["load_average_1m"]
    md += f"\n1-minute load average on {os.cpu_count()} cores: {load['start']} at the start, "
    md += f"{load['end']} at the end (the machine is shared).\n"
    md += "\n### Throughput of parse + rules + batching (one core, no I/O)\n\n"
    md += report.markdown_table(
        ["events", "seconds", "events/s"], [[thr["events"], thr["seconds"], thr["events_per_s"]]]
    )
    e2e = data["end_to_end"]
    md += "\n### End-to-end throughput (a burst of notifications -> applied to Redis)\n\n"
    md += report.markdown_table(
        ["events", "seconds", "events/s", "batches", "flushes meanwhile"],
        [[e2e["events"], e2e["seconds"], e2e["events_per_s"], e2e["batches"], e2e["flushes"]]],
    )
    md += "\n### Write overhead: pgbench single-row UPDATE TPS\n\n"
    md += report.markdown_table(
        [
            "clients",
            "no triggers",
            "pgbust capture",
            "ratio",
            "row-level pg_notify (reference)",
            "capture, writer synchronous_commit=off",
        ],
        [
            [
                r["clients"],
                r["tps_without_triggers"],
                r["tps_with_capture"],
                r["ratio"],
                r["tps_row_level_notify_reference"],
                r["tps_capture_synchronous_commit_off"],
            ]
            for r in data["overhead"]
        ],
    )
    return md + _modes_table(data["modes"])


def _modes_table(modes: dict[str, Any]) -> str:
    lag, kill = modes["lag"], modes["kill"]
    md = "\n### notify and wal side by side (one private wal_level=logical cluster, fsync=off)\n\n"
    md += "Each mode in a namespace of its own on the same server, notify first; the invalidator "
    md += "runs in this process for the latency, as `python -m invalidator` for the kill.\n\n"

    def both(cell: Any) -> list[Any]:
        return [cell(m) for m in ("notify", "wal")]

    def ms(r: dict[str, Any]) -> str:
        p = r["ack_to_delete_ms"]
        return f"{p['p50']} / {p['p99']} / {p['max']} ({r['achieved_writes_per_s']}/s)"

    md += report.markdown_table(
        ["", "notify", "wal"],
        [
            ["commit acknowledged -> gone from Redis at 1,000 writes/s, p50 / p99 / max ms "
             "(achieved)", *both(lambda m: ms(lag[m]))],
            ["SIGKILL of the active invalidator under 1,000 writes/s, new one started at once: "
             "writes missed (of cached entries written)",
             *both(lambda m: f"{kill[m]['writes_missed']} (of {kill[m]['filled_and_written']})")],
            ["epoch bumps", *both(lambda m: kill[m]["epoch_bumps"])],
            ["hit ratio of the cached entries not written, before the kill -> after the restart",
             *both(lambda m: f"{kill[m]['hit_ratio_untouched_before']} -> "
                             f"{kill[m]['hit_ratio_untouched']} (of {kill[m]['untouched']})")],
            ["SIGKILL -> new instance's capture live, s",
             *both(lambda m: kill[m]["killed_to_capture_live_s"])],
            ["writes during the kill run (achieved writes/s)",
             *both(lambda m: f"{kill[m]['writes']} ({kill[m]['achieved_writes_per_s']}/s)")],
        ],
    )  # fmt: skip
    md += "\npgbench single-row UPDATE TPS on the same server (best of the runs):\n\n"
    md += report.markdown_table(
        ["clients", "no capture", "notify", "notify ratio", "wal", "wal ratio"],
        [
            [r["clients"], r["none"], r["notify"], r["notify_ratio"], r["wal"], r["wal_ratio"]]
            for r in modes["overhead"]
        ],
    )
    load = modes["load_average_1m"]
    md += f"\n1-minute load average on {os.cpu_count()} cores: {load['start']} at the start of "
    md += f"this part, {load['end']} at its end.\n"
    return md


async def _run(quick: bool) -> dict[str, Any]:
    server = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/pgbust")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    seconds = 3.0 if quick else 8.0
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "update.sql"
        script.write_text(UPDATE_SCRIPT)
        with scratch_database(server, PRODUCTS) as url:
            lag = await lag_at_rates(url, redis_url, [100, 1000, 5000], seconds)
            end_to_end = await end_to_end_throughput(url, redis_url, 20_000 if quick else 100_000)
            overhead = await trigger_overhead(
                url, [1, 8, 32], seconds, script, repeats=1 if quick else 2
            )
    load_end = round(os.getloadavg()[0], 2)
    # imported here: bench.capture_modes builds on this module's writers and lag measurement
    from bench.capture_modes import run_modes

    with logical_cluster() as cluster, scratch_database(cluster.admin_url, PRODUCTS) as url:
        modes = await run_modes(url, redis_url, quick)
    modes["load_average_1m"] = {"start": load_end, "end": round(os.getloadavg()[0], 2)}
    return {
        "quick": quick,
        "load_average_1m": {"start": load_before, "end": load_end},
        "seconds_per_run": seconds,
        "throughput": throughput(50_000 if quick else 300_000),
        "end_to_end": end_to_end,
        "lag": lag,
        "overhead": overhead,
        "modes": modes,
    }


def run(out: Path, quick: bool) -> None:
    data = asyncio.run(_run(quick))
    report.write(out, "invalidator", data, _table(data))
    print(_table(data))
