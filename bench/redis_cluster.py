"""Redis Cluster against one Redis, side by side in one run (profile `redis-cluster`).

Redis-side work only, in this process, on a private redis-server and a private cluster (three
masters, one replica each) started for the run and deleted after it:
- invalidation throughput: batches of entries invalidated the way the invalidator does on
  one Redis (RedisCache.invalidate: one INVALIDATE + PUBLISH) and on the cluster
  (ClusterInvalidation: one INVALIDATE_NODE per master, then one SPUBLISH); entries either all
  filed under one tag (one home: one slot) or untagged (each entry its own home: the batch
  spreads over as many slots);
- read throughput: hits of the lease script (GET_OR_LEASE, the API's L2 read) on filled
  entries, from concurrent readers, on one Redis and on the cluster (per-slot epoch keys).

Then the daemons end to end on the same two backends (bench/redis_cluster_e2e.py): the
invalidator's burst throughput and commit -> delete lag, and the API's L1 hit, L2 hit and
MISS under wrk.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import report
from bench.redis_cluster_e2e import run_end_to_end
from pgbust import lua
from pgbust.cluster_invalidation import ClusterInvalidation
from pgbust.keys import ClusterNames, Keyspace
from pgbust.protocol import Invalidation, Targets
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import cluster_client
from tests.support.redis_cluster import RedisClusterServers
from tests.support.servers import RedisServer

BATCH = 100
ENTRIES = 1_000
READERS = 16


def _targets(n: int, shape: str, round_: int) -> tuple[Targets, dict[str, str]]:
    entries = [f"product:{round_}:{i}" for i in range(n)]
    homes = {e: ("category:1" if shape == "one tag" else e) for e in entries}
    return Targets(frozenset(entries)), homes


async def _invalidations(cache: Any, shape: str, seconds: float, cluster: bool) -> float:
    """Batches per second for `seconds`."""
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        targets, homes = _targets(BATCH, shape, done)
        message = Invalidation.of(targets, origin="cdc", ts_us=1)
        if cluster:
            cache.home_of = homes.__getitem__
        await cache.invalidate(targets, message)
        done += 1
    return done / (time.perf_counter() - started)


async def _reads(
    client: aioredis.Redis, keys_of: list[list[str]], seconds: float
) -> tuple[float, float]:
    """(hits per second, p99 ms) of GET_OR_LEASE on filled entries, READERS at once."""
    script = client.register_script(lua.GET_OR_LEASE)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    hits = 0

    async def reader(offset: int) -> None:
        nonlocal hits
        i = offset
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            reply = await script(keys=keys_of[i % len(keys_of)], args=["t", 2000])
            latencies.append((time.perf_counter() - t0) * 1000)
            if int(reply[0]) == 1:
                hits += 1
            i += READERS

    started = time.perf_counter()
    await asyncio.gather(*(reader(r) for r in range(READERS)))
    return hits / (time.perf_counter() - started), report.percentiles(latencies)["p99"]


async def _fill_single(client: aioredis.Redis, ks: Keyspace) -> list[list[str]]:
    epoch = str(int(time.time() * 1_000_000))
    await client.set(ks.epoch, epoch)
    keys_of = []
    for i in range(ENTRIES):
        entry = f"product:{i}"
        await client.set(ks.value(entry), f"{epoch}|{{}}")
        keys_of.append([ks.epoch, ks.value(entry), ks.lease(entry)])
    return keys_of


async def _fill_cluster(client: aioredis.Redis, names: ClusterNames) -> list[list[str]]:
    epoch = str(int(time.time() * 1_000_000))
    keys_of = []
    for i in range(ENTRIES):
        entry = f"product:{i}"
        value = names.value(entry, entry)
        epoch_key = names.epoch_of(value)
        await client.set(epoch_key, epoch)
        await client.set(value, f"{epoch}|{{}}")
        keys_of.append([epoch_key, value, names.lease(entry, entry)])
    return keys_of


async def _measure(single_url: str, cluster_url: str, seconds: float) -> dict[str, Any]:
    ns = f"bench{uuid.uuid4().hex[:6]}"
    single = aioredis.Redis.from_url(single_url)
    cluster = cluster_client(cluster_url)
    results: dict[str, Any] = {"invalidation_batches_per_s": {}, "reads": {}}
    try:
        plain = RedisCache(single, Keyspace(ns))
        sharded = ClusterInvalidation(cluster, Keyspace(ns, cluster=True), lambda e: e)
        for shape in ("one tag", "untagged"):
            results["invalidation_batches_per_s"][shape] = {
                "one redis": round(await _invalidations(plain, shape, seconds, False), 1),
                "cluster": round(await _invalidations(sharded, shape, seconds, True), 1),
            }
        for name, client, keys_of in (
            ("one redis", single, await _fill_single(single, Keyspace(ns))),
            ("cluster", cluster, await _fill_cluster(cluster, ClusterNames(ns))),
        ):
            rate, p99 = await _reads(client, keys_of, seconds)
            results["reads"][name] = {"hits_per_s": round(rate), "p99_ms": round(p99, 3)}
    finally:
        await single.aclose()
        await cluster.aclose()
    return results


def run(out: Path, quick: bool) -> None:
    seconds = 1.0 if quick else 5.0
    folder = Path(tempfile.mkdtemp(prefix="pgbust-bench-redis-cluster-"))
    single = RedisServer(folder / "single")
    cluster = RedisClusterServers(folder / "cluster")
    server_url = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/pgbust")
    single.start()
    try:
        cluster.start()
        try:
            results = asyncio.run(_measure(single.url, cluster.url, seconds))
            daemons, daemons_md = run_end_to_end(server_url, single.url, cluster.url, quick)
        finally:
            cluster.stop()
    finally:
        single.stop(keep_snapshot=False)
        shutil.rmtree(folder, ignore_errors=True)
    inv = results["invalidation_batches_per_s"]
    rows: list[list[Any]] = [
        [
            f"invalidation, batches of {BATCH} entries, {shape}",
            f"{inv[shape]['one redis']} batches/s",
            f"{inv[shape]['cluster']} batches/s",
        ]
        for shape in inv
    ]
    reads = results["reads"]
    rows.append(
        [
            f"L2 hit (GET_OR_LEASE), {READERS} concurrent readers",
            f"{reads['one redis']['hits_per_s']}/s, p99 {reads['one redis']['p99_ms']} ms",
            f"{reads['cluster']['hits_per_s']}/s, p99 {reads['cluster']['p99_ms']} ms",
        ]
    )
    table = report.markdown_table(["what (Redis side, one process)", "one Redis", "cluster"], rows)
    note = (
        f"\n{seconds:g} s per cell, one run, one Python process (the client is the bottleneck "
        "as much as Redis). The cluster's three masters run on the same two-core host as "
        "the client. Untagged entries each have their own home, so a batch of them spreads "
        "over about as many slots: one INVALIDATE_NODE per master touched.\n"
    )
    data = {
        "seconds_per_cell": seconds,
        "batch": BATCH,
        "readers": READERS,
        **results,
        "daemons": daemons,
    }
    markdown = f"{table}{note}\n## The daemons end to end\n\n{daemons_md}"
    report.write(out, "redis-cluster", data, markdown)
    print(markdown)
