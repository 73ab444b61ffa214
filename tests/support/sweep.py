"""The final sweep of a chaos scenario: after writes stop and invalidation drains, every
entry served by every API instance (and every live entry in Redis) must equal the database.

The expected bytes come from `api.loaders.load_entry`, the very function the API fills its
caches with, so "equal" is exact (compared as parsed JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import psycopg
import redis.asyncio as aioredis

from api.keys import category_page_entry, category_summary_entry, product_entry
from api.loaders import load_entry
from pgbust.keys import Keyspace
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import cluster_client
from tests.support.demo import demo_tags
from tests.support.servers import wait_until


@dataclass(frozen=True)
class Entry:
    name: str  # the cache entry ("product:42")
    path: str  # the HTTP path that serves it


@dataclass
class Difference:
    where: str  # an API base URL, or "redis"
    entry: str
    got: Any
    expected: Any

    def __str__(self) -> str:
        return f"{self.where} {self.entry}: got {self.got!r:.300} expected {self.expected!r:.300}"


@dataclass
class SweepResult:
    checked: int = 0
    redis_checked: int = 0
    differences: list[Difference] = field(default_factory=list)
    x_cache: Counter[str] = field(default_factory=Counter)

    @property
    def stale(self) -> int:
        return len(self.differences)

    def report(self, limit: int = 10) -> str:
        lines = [str(d) for d in self.differences[:limit]]
        more = self.stale - limit
        if more > 0:
            lines.append(f"... and {more} more")
        return "\n".join(lines)


def catalogue_entries(database_url: str, page_limit: int = 20) -> list[Entry]:
    """Every product, every category page (of `page_limit`, up to one past the end), every
    summary, as cache entries with their HTTP paths."""
    with psycopg.connect(database_url) as conn:
        product_ids = [r[0] for r in conn.execute("SELECT id FROM products ORDER BY id")]
        categories = conn.execute(
            "SELECT c.id, count(p.id) FROM categories c LEFT JOIN products p"
            " ON p.category_id = c.id GROUP BY c.id ORDER BY c.id"
        ).fetchall()
    entries = [Entry(product_entry(pid), f"/products/{pid}") for pid in product_ids]
    for category_id, count in categories:
        for offset in range(0, count + page_limit, page_limit):
            entries.append(
                Entry(
                    category_page_entry(category_id, page_limit, offset),
                    f"/categories/{category_id}/products?limit={page_limit}&offset={offset}",
                )
            )
        entries.append(
            Entry(category_summary_entry(category_id), f"/categories/{category_id}/summary")
        )
    return entries


async def _expected(database_url: str, entries: Sequence[Entry]) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        result: dict[str, Any] = {}
        for entry in entries:
            raw = await load_entry(conn, entry.name)
            result[entry.name] = None if raw is None else orjson.loads(raw)
        return result


async def _redis_live(
    redis_url: str, namespace: str, entries: Sequence[Entry], cluster: bool = False
) -> dict[str, Any]:
    # on a cluster each entry is peeked on the master of its home's slot
    client = cluster_client(redis_url) if cluster else aioredis.Redis.from_url(redis_url)
    try:
        cache = RedisCache(client, Keyspace(namespace, cluster=cluster))
        live: dict[str, Any] = {}
        for entry in entries:
            raw = await cache.peek(entry.name, tags=demo_tags(entry.name))
            if raw is not None:
                live[entry.name] = orjson.loads(raw)
        return live
    finally:
        await client.aclose()


def final_sweep(
    api_urls: Sequence[str],
    database_url: str,
    *,
    redis_url: str | None = None,
    namespace: str | None = None,
    page_limit: int = 20,
    cluster: bool = False,
) -> SweepResult:
    """Read every entry from every API instance (and peek every live Redis value) once and
    compare with the database. Call it after `drain`: nothing here waits or retries."""
    entries = catalogue_entries(database_url, page_limit)
    expected = asyncio.run(_expected(database_url, entries))
    result = SweepResult()
    with httpx.Client(timeout=10.0) as http:
        for base in api_urls:
            for entry in entries:
                response = http.get(base + entry.path)
                result.checked += 1
                result.x_cache[response.headers.get("x-cache", "?")] += 1
                want = expected[entry.name]
                if want is None:
                    if response.status_code != 404:
                        result.differences.append(
                            Difference(base, entry.name, response.status_code, 404)
                        )
                    continue
                got: Any = (
                    orjson.loads(response.content)
                    if response.status_code == 200
                    else response.status_code
                )
                if got != want:
                    result.differences.append(Difference(base, entry.name, got, want))
    if redis_url is not None and namespace is not None:
        live = asyncio.run(_redis_live(redis_url, namespace, entries, cluster))
        result.redis_checked = len(live)
        for name, got in live.items():
            if got != expected[name]:
                result.differences.append(Difference("redis", name, got, expected[name]))
    return result


def probe_write(database_url: str, product_id: int) -> int:
    """An out-of-band UPDATE (as psql would do); returns the committed version."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "UPDATE products SET stock = (stock + 1) %% 1000 WHERE id = %s RETURNING version",
            (product_id,),
        ).fetchone()
    assert row is not None, f"probe product {product_id} does not exist"
    return int(row[0])


def visible_everywhere(api_urls: Sequence[str], product_id: int, version: int) -> bool:
    """True when every API instance serves `version` (or newer) of the product."""
    for base in api_urls:
        try:
            response = httpx.get(f"{base}/products/{product_id}", timeout=2.0)
        except httpx.HTTPError:
            return False
        if response.status_code != 200 or int(response.json()["version"]) < version:
            return False
    return True


def wait_propagated(
    api_urls: Sequence[str], database_url: str, product_id: int, timeout: float = 30.0
) -> float | None:
    """Write the probe product out of band and wait until every instance serves the new
    version: the CDC path works end to end. Returns the seconds it took, or None.

    The probe is read (cached) on every instance first, so the new version can only show
    once the invalidation reached that instance's L1; NOTIFY and pub/sub keep commit order,
    so every change committed before the probe has been applied too."""
    started = time.monotonic()
    _prime(api_urls, product_id)
    try:
        version = probe_write(database_url, product_id)
    except psycopg.Error:
        ok = wait_until(lambda: _try_probe(database_url, product_id) is not None, timeout)
        if not ok:
            return None
        version = probe_write(database_url, product_id)
    remaining = max(0.1, timeout - (time.monotonic() - started))
    if not wait_until(lambda: visible_everywhere(api_urls, product_id, version), remaining):
        return None
    return time.monotonic() - started


def _prime(api_urls: Sequence[str], product_id: int) -> None:
    for base in api_urls:
        for _ in range(2):
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{base}/products/{product_id}", timeout=2.0)


def _try_probe(database_url: str, product_id: int) -> int | None:
    try:
        return probe_write(database_url, product_id)
    except psycopg.Error:
        return None


def queue_empty(broker_redis: Any, queue: str) -> bool:
    """The Celery queue (Redis broker list) holds no pending task."""
    try:
        return int(broker_redis.llen(queue)) == 0
    except Exception:
        return False
