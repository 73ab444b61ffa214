"""The consistency audit: sample cached entries, compare them with Postgres, delete the stale.

Consistency is measured, not assumed (Meta's Polaris): each run reports how many of the
sampled live entries differed from the database, as a ratio, in a log line, in Redis
("<ns>:worker:audit") and through the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from psycopg import AsyncConnection

from pgbust.entries import Entries, UndeclaredEntry, UnknownEntry
from pgbust.keys import ClusterNames
from pgbust.protocol import Invalidation, Targets
from pgbust.redis_cache import RedisCache
from pgbust.replica import UNKNOWN_LSN
from worker import jobs, stats

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuditReport:
    sampled: int  # value keys picked from Redis
    checked: int  # live entries compared with Postgres
    dead: int  # values of an old epoch or tag generation (already a miss for readers)
    unknown: int  # keys no loader understands
    stale: int  # live entries that differed from Postgres, and still did after the grace
    deleted: list[str]  # the stale entries, invalidated (Redis and every L1)
    duration_ms: float
    at: float  # Unix time of the end of the run

    @property
    def ratio(self) -> float:
        """Inconsistency ratio: stale / checked (0.0 when nothing was checked)."""
        return self.stale / self.checked if self.checked else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}

    def line(self) -> str:
        return (
            f"audit: sampled={self.sampled} checked={self.checked} stale={self.stale} "
            f"ratio={self.ratio:.6f} dead={self.dead} unknown={self.unknown} "
            f"duration_ms={self.duration_ms:.1f}"
        )


async def sample_value_keys(cache: RedisCache, sample: int, chunk: int = 500) -> list[str]:
    """About `sample` value keys of the namespace, picked without RANDOMKEY.

    SCAN starts from a random cursor (a random hash-table bucket), wraps around to cover the
    whole table at most once, and the result is subsampled: cheap, roughly uniform, and
    bounded by one pass over the keyspace even when the namespace holds few keys.
    """
    if cache.keyspace.cluster:
        return await _sample_cluster_value_keys(cache, sample, chunk)
    client, pattern = cache.client, cache.keyspace.value_pattern
    size = int(await client.dbsize())
    cursor = random.getrandbits(max(size, 1).bit_length())
    wrapped = cursor == 0
    found: set[str] = set()
    while len(found) < sample:
        cursor, keys = await client.scan(cursor, match=pattern, count=max(chunk, sample))
        found.update(k.decode() if isinstance(k, bytes) else k for k in keys)
        if int(cursor) == 0:
            if wrapped:
                break
            wrapped = True
    keys_found = sorted(found)
    return random.sample(keys_found, sample) if len(keys_found) > sample else keys_found


async def _sample_cluster_value_keys(cache: RedisCache, sample: int, chunk: int) -> list[str]:
    """On a Redis Cluster: the masters in random order, each SCANned from the start, until
    four times the sample was seen (or all of it), then subsampled."""
    found: set[str] = set()
    scan = jobs.scan_cluster_values(cache, max(chunk, sample), shuffled=True)
    async with contextlib.aclosing(scan):
        async for keys in scan:
            found.update(keys)
            if len(found) >= 4 * sample:
                break
    keys_found = sorted(found)
    return random.sample(keys_found, sample) if len(keys_found) > sample else keys_found


async def _compare(
    cache: RedisCache, conn: AsyncConnection[Any], served: Entries, entry: str
) -> tuple[str, bytes | None]:
    """("dead"|"unknown"|"ok"|"differs", cached payload)."""
    try:
        tags = served.tags(entry)
    except UndeclaredEntry:
        return "unknown", None
    cached = await cache.peek(entry, tags=tags)
    if cached is None:
        return "dead", None
    try:
        computed = await served.compute(conn, entry)
    except (UnknownEntry, UndeclaredEntry):
        return "unknown", cached
    fresh = None if computed is None else computed.payload
    return ("ok" if fresh == cached else "differs"), cached


async def audit(
    cache: RedisCache,
    conn: AsyncConnection[Any],
    sample: int,
    grace_ms: int = 200,
    *,
    served: Entries,
) -> AuditReport:
    """Compare up to `sample` cached entries with Postgres; invalidate the stale ones.

    An entry that differs may only be in flight (its invalidation not applied yet), so it is
    checked again after `grace_ms`: it counts as stale only if the cache still holds the same
    bytes and they still differ from the database.
    """
    started = time.perf_counter()
    value_keys = await sample_value_keys(cache, sample)
    ks = cache.keyspace
    entry_of = ClusterNames(ks.namespace).entry_of if ks.cluster else ks.entry_of
    counts = {"dead": 0, "unknown": 0, "ok": 0}
    suspects: dict[str, bytes | None] = {}
    for value_key in value_keys:
        entry = entry_of(value_key)
        verdict, cached = await _compare(cache, conn, served, entry)
        if verdict == "differs":
            suspects[entry] = cached
        else:
            counts[verdict] += 1
    deleted: list[str] = []
    if suspects:
        await asyncio.sleep(grace_ms / 1000)
        for entry, cached in suspects.items():
            verdict, now_cached = await _compare(cache, conn, served, entry)
            if verdict == "differs" and now_cached == cached:
                deleted.append(entry)
    if deleted:
        targets = Targets(keys=frozenset(deleted))
        message = Invalidation.of(targets, origin="worker", reason="audit: stale entries")
        # the primary differed: a lagging replica could hand the same old row back, so the
        # LSN marker goes too (readers use the primary until the invalidator raises it again)
        await cache.invalidate(targets, message, lsn=UNKNOWN_LSN)
    return AuditReport(
        sampled=len(value_keys),
        checked=len(value_keys) - counts["dead"] - counts["unknown"],
        dead=counts["dead"],
        unknown=counts["unknown"],
        stale=len(deleted),
        deleted=sorted(deleted),
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
        at=time.time(),
    )


async def run_and_record(
    cache: RedisCache,
    conn: AsyncConnection[Any],
    sample: int,
    grace_ms: int,
    *,
    served: Entries,
) -> AuditReport:
    """One audit, recorded (counters, last report in Redis) and logged: tasks and CLI share it."""
    report = await audit(cache, conn, sample, grace_ms, served=served)
    await stats.save_audit(cache.client, cache.keyspace, report.as_dict())
    await stats.count(
        cache.client,
        cache.keyspace,
        audits=1,
        audit_checked=report.checked,
        audit_stale=report.stale,
    )
    log.log(logging.WARNING if report.stale else logging.INFO, "%s", report.line())
    return report
