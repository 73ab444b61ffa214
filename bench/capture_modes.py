"""notify and wal capture side by side, on one private wal_level=logical cluster (the part of
`python -m bench invalidator` that needs WAL capture):

- pgbench single-row UPDATE TPS at 1, 8 and 32 clients with no capture, notify triggers and
  WAL capture (bench/wal.py's write_overhead, on the same server);
- commit acknowledged -> gone from Redis at 1,000 writes/s, p50 / p99, both modes (the
  invalidator in this process, as in bench/invalidator.py's lag_at_rates);
- SIGKILL of the one active invalidator (`python -m invalidator`, a real process) under
  1,000 writes/s and a start of a new one at once: writes missed (a written entry still in
  Redis once every write is applied), epoch bumps (flushes heard on the namespace's channel)
  and the hit ratio of the cached entries that no writer touched, before the kill and after.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg
import redis.asyncio as aioredis

from api.keys import product_entry
from bench import wal as bench_wal
from bench.invalidator import PRODUCTS, UPDATE_SCRIPT, lag_at_rates, steady_writer
from db import capture as triggers
from db import wal
from pgbust import declaration
from pgbust.devservers import free_port
from pgbust.keys import Keyspace
from pgbust.protocol import Lease
from pgbust.redis_cache import RedisCache
from pgbust.settings import wal_name
from tests.chaos.flushes import FlushWatch
from tests.support.demo import demo_tags
from tests.support.processes import ManagedProcess

Capture = Literal["notify", "wal"]
MODES: tuple[Capture, ...] = ("notify", "wal")
# the written entry filled last, once the writers stopped: gone = every earlier write applied
MARKER = PRODUCTS


def kill_outcome(
    filled: Iterable[int], written: Iterable[int], cached: Iterable[int]
) -> dict[str, Any]:
    """What a kill cost, from the entries filled before it, the ids written meanwhile and
    the entries still cached once every write was applied (pure)."""
    filled_set, written_set, cached_set = set(filled), set(written), set(cached)
    untouched = filled_set - written_set
    return {
        "entries_filled": len(filled_set),
        "filled_and_written": len(filled_set & written_set),
        # a cached entry that a write changed: served stale until something else evicts it
        "writes_missed": len(filled_set & written_set & cached_set),
        "untouched": len(untouched),
        "hit_ratio_untouched": round(len(untouched & cached_set) / len(untouched), 4)
        if untouched
        else 0.0,
    }


# 50 calls in flight at a time: redis-py opens one connection for each, and its pool is bounded
async def _fill(cache: RedisCache, ids: list[int]) -> int:
    async def one(product_id: int) -> int:
        entry = product_entry(product_id)
        lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
        if not isinstance(lease, Lease):
            return 0
        payload = b'{"cached":true}'
        stored = await cache.fill(
            entry,
            lease.token,
            lease.stamp,
            payload,
            rows=(),
            since=lease.since,
            tags=demo_tags(entry),
        )
        return int(stored == 1)

    stored = 0
    for start in range(0, len(ids), 50):
        stored += sum(await asyncio.gather(*(one(i) for i in ids[start : start + 50])))
    return stored


async def _cached(cache: RedisCache, ids: list[int]) -> list[int]:
    out = []
    for start in range(0, len(ids), 50):
        chunk = ids[start : start + 50]
        values = await asyncio.gather(
            *(cache.peek(product_entry(i), tags=demo_tags(product_entry(i))) for i in chunk)
        )
        out += [i for i, value in zip(chunk, values, strict=True) if value is not None]
    return out


def _capture_live(proc: ManagedProcess) -> bool:
    body = httpx.get(proc.base_url + "/healthz", timeout=1.0).json()
    return bool((body.get("capture") or {}).get("capture_live"))


async def _start(name: str, env: dict[str, str], log_dir: Path) -> ManagedProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "invalidator", "--metrics-port", str(port)]
    proc = ManagedProcess(name, cmd, env, log_dir, port).start()
    await asyncio.to_thread(proc.wait_ready, lambda: _capture_live(proc), 30.0)
    return proc


async def kill_and_restart(
    url: str,
    redis_url: str,
    capture: Capture,
    namespace: str,
    *,
    rate: int,
    seconds: float,
    kill_after: float,
    filled_entries: int,
) -> dict[str, Any]:
    """Writers at `rate` for `seconds`; `kill_after` seconds in, SIGKILL the invalidator and
    start a new one at once. `filled_entries` product entries (ids 1..N) are cached first."""
    keyspace = Keyspace(namespace)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "PGBUST_NAMESPACE": namespace,
        "PGBUST_CAPTURE": capture,
        "PGBUST_WARM_TOP": "0",
    }
    client = aioredis.Redis.from_url(redis_url)
    cache = RedisCache(client, keyspace)
    loop = asyncio.get_running_loop()
    writers = max(1, min(12, rate // 200))
    with tempfile.TemporaryDirectory(prefix="pgbust-bench-kill-") as logs:
        first = await _start("invalidator-1", env, Path(logs))
        second: ManagedProcess | None = None
        try:
            ids = list(range(1, filled_entries + 1))
            stored = await _fill(cache, ids)
            hit_before = len(await _cached(cache, ids)) / len(ids)
            watch = await asyncio.to_thread(FlushWatch(redis_url, keyspace).start)
            try:
                start_at = time.time() + 5.0  # writers are spawned processes: let them start
                with ProcessPoolExecutor(writers, mp_context=get_context("spawn")) as pool:
                    futures = [
                        loop.run_in_executor(
                            pool, steady_writer, url, rate / writers, start_at, seconds, i
                        )
                        for i in range(writers)
                    ]
                    await asyncio.sleep(max(0.0, start_at - time.time()) + kill_after)
                    killed_at = time.monotonic()
                    await asyncio.to_thread(first.kill)
                    second = await _start("invalidator-2", env, Path(logs))
                    live_after = time.monotonic() - killed_at
                    parts = await asyncio.gather(*futures)
                # every write before the marker's is applied once the marker's entry is gone
                drain_started = time.monotonic()
                if await _fill(cache, [MARKER]) != 1:
                    raise RuntimeError(f"{capture}: the marker entry could not be filled")
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("UPDATE products SET stock = stock + 1 WHERE id = %s", (MARKER,))
                while (
                    await cache.peek(product_entry(MARKER), tags=demo_tags(product_entry(MARKER)))
                    is not None
                ):
                    if time.monotonic() - drain_started > 60:
                        raise RuntimeError(f"{capture}: the marker write was not applied in 60 s")
                    await asyncio.sleep(0.02)
                drained_s = time.monotonic() - drain_started
            finally:
                flushes = await asyncio.to_thread(watch.stop)
            writes = [w for part in parts for w in part]
            cached = await _cached(cache, ids)
        finally:
            first.stop()
            if second is not None:
                second.stop()
            await client.aclose()
    outcome = kill_outcome(ids, (product_id for product_id, _, _ in writes), cached)
    return {
        "capture": capture,
        "target_writes_per_s": rate,
        "achieved_writes_per_s": round(len(writes) / seconds),
        "writes": len(writes),
        "kill_after_s": kill_after,
        "killed_to_capture_live_s": round(live_after, 2),
        "marker_applied_after_s": round(drained_s, 3),
        "entries_stored": stored,
        "hit_ratio_untouched_before": round(hit_before, 4),
        **outcome,
        "epoch_bumps": -1 if flushes.deaf_since else len(flushes.heard),
        "flush_reasons": flushes.describe()[:5],
    }


def _set_mode(url: str, capture: Capture, namespace: str) -> None:
    """notify: the capture triggers; wal: publication, FULL identity and the namespace's slot
    (created now: it holds only what is written from here on), no triggers, as `db upgrade`
    with PGBUST_CAPTURE=wal sets it up."""
    with psycopg.connect(url, autocommit=True) as conn:
        if capture == "wal":
            slot = wal_name(namespace)
            wal.ensure(conn, slot, slot, list(declaration.load().tables))
            triggers.remove(conn)
        else:
            triggers.install(conn)


def _drop_slot(url: str, namespace: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        wal.remove(conn, wal_name(namespace), wal_name(namespace))


async def run_modes(url: str, redis_url: str, quick: bool) -> dict[str, Any]:
    """Both modes on `url` (a database of a wal_level=logical server), notify first; each
    measurement in a namespace (and in wal mode a slot) of its own."""
    seconds = 3.0 if quick else 8.0
    kill_seconds = 6.0 if quick else 12.0
    out: dict[str, Any] = {"lag": {}, "kill": {}}
    for capture in MODES:
        for part in ("lag", "kill"):
            print(f"bench invalidator: {capture} {part}", file=sys.stderr, flush=True)
            namespace = f"bench{uuid.uuid4().hex[:8]}"
            _set_mode(url, capture, namespace)
            try:
                if part == "lag":
                    lags = await lag_at_rates(
                        url, redis_url, [1000], seconds, capture=capture, namespace=namespace
                    )
                    out["lag"][capture] = lags[0]
                else:
                    out["kill"][capture] = await kill_and_restart(
                        url,
                        redis_url,
                        capture,
                        namespace,
                        rate=1000,
                        seconds=kill_seconds,
                        kill_after=kill_seconds / 3,
                        filled_entries=5_000 if quick else 20_000,
                    )
            finally:
                if capture == "wal":
                    _drop_slot(url, namespace)
    # last: it leaves the tables as its last configuration (wal) left them
    print("bench invalidator: pgbench TPS none / notify / wal", file=sys.stderr, flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        wal.ensure(conn, bench_wal.SLOT, bench_wal.SLOT, list(declaration.load().tables))
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "update.sql"
        script.write_text(UPDATE_SCRIPT)
        out["overhead"] = await bench_wal.write_overhead(
            url, script, [1, 8, 32], seconds, repeats=1 if quick else 2
        )
    with psycopg.connect(url, autocommit=True) as conn:
        wal.remove(conn, bench_wal.SLOT, bench_wal.SLOT)
    return out
