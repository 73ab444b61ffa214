"""The whole stack on a real Redis Cluster (three masters, one replica each): a real
invalidator and two real API processes with PGBUST_REDIS_CLUSTER=true, Postgres written out
of band with psql. Each test ends with the final sweep: every entry served by every instance,
and every live entry on the cluster's masters, equals the database.

One cluster for the module (never two at a time on a shared host); the test that kills a
master runs last."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from db import migrate, seed
from invalidator.cluster_watch import TopologyWatch
from invalidator.listener import FlushRequest
from pgbust import declaration
from pgbust.entries import Entries
from pgbust.keys import ClusterNames, Keyspace
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import cluster_client
from pgbust.slots import SLOTS
from tests.conftest import API_TOKEN
from tests.support.capture_stack import Stack, metric, start_stack
from tests.support.databases import own_database
from tests.support.redis_cluster import NodeInfo, RedisClusterServers
from tests.support.servers import RedisServer, wait_until
from worker import audit

PRODUCTS, CATEGORIES = 40, 3
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("stack-cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def shop(server_urls: dict[str, str]) -> Iterator[str]:
    with own_database(server_urls["DATABASE_URL"], "cluster_stack") as url:
        migrate.upgrade(url)
        seed.seed(url, products=PRODUCTS, categories=CATEGORIES)
        yield url


@pytest.fixture
def stack(
    shop: str, cluster: RedisClusterServers, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Stack]:
    """The invalidator and two API instances on the cluster; the Celery broker is the private
    standalone Redis (Celery has no Redis Cluster broker), which no worker consumes here."""
    env = {
        "REDIS_URL": cluster.url,
        "PGBUST_REDIS_CLUSTER": "true",
        "PGBUST_HOT_SAMPLE_RATE": "0",
    }
    started = start_stack(shop, redis_server, tmp_path, env=env)
    try:
        yield dataclasses.replace(started, redis_url=cluster.url, cluster=True)
    finally:
        started.processes.stop_all()


def psql(database_url: str, statement: str) -> None:
    """An out-of-band write typed into psql (DESIGN invariant 4)."""
    binary = shutil.which("psql")
    assert binary is not None, "psql is not installed"
    done = subprocess.run(
        [binary, "-X", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-c", statement],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def category_of(database_url: str, product_id: int) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT category_id FROM products WHERE id = %s", (product_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def read(base_url: str, path: str) -> tuple[object, str]:
    response = httpx.get(base_url + path, timeout=5)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["x-cache"]


def slot_epochs(cluster: RedisClusterServers, namespace: str) -> list[int]:
    """The epoch of every slot, read from the masters (0 where missing)."""
    names = ClusterNames(namespace)
    client = cluster.client()
    try:
        pipe = client.pipeline()  # type: ignore[no-untyped-call]
        for slot in range(SLOTS):
            pipe.get(names.epoch(slot))
        return [int(v or 0) for v in pipe.execute()]
    finally:
        client.close()


def all_grew(now: list[int], before: list[int]) -> bool:
    return all(a > b for a, b in zip(now, before, strict=True))


def served_from_l1(stack: Stack, path: str) -> bool:
    return all(read(base, path)[1] == "L1" for base in stack.api_urls)


def test_update_via_psql_evicts_product_page_and_summary_from_l1_and_l2_on_every_instance(
    stack: Stack,
) -> None:
    stack.prime()
    product = 7
    category = category_of(stack.database_url, product)
    paths = [
        f"/products/{product}",
        f"/categories/{category}/products?limit=20&offset=0",  # via the tag category:<id>
        f"/categories/{category}/summary",
    ]
    for path in paths:  # cached in L1 on every instance (and so in L2)
        assert wait_until(lambda path=path: served_from_l1(stack, path), 10), path
    before = {path: read(stack.api_urls[0], path)[0] for path in paths}

    psql(
        stack.database_url,
        f"UPDATE products SET price_cents = price_cents + 7 WHERE id = {product}",
    )
    stack.drain()  # a later captured write reached every instance: this one was applied

    for base in stack.api_urls:
        for path in paths:
            body, tier = read(base, path)
            assert tier != "L1" or body != before[path], (base, path, tier)
            assert body != before[path], (base, path, "still the old value")
    result = stack.sweep()
    assert result.stale == 0, result.report()
    assert result.redis_checked > 0


def test_a_write_through_one_instance_is_read_on_the_other_right_after_it(
    stack: Stack,
) -> None:
    """Read-your-writes (DESIGN invariant 6): the write path's own invalidation runs on the
    cluster (per slot, then SPUBLISH) before the response."""
    stack.drain()
    a, b = stack.api_urls
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    stale = []
    with httpx.Client(timeout=5) as client:
        for product in range(2, 22):
            path = f"/products/{product}"
            assert wait_until(lambda path=path: read(b, path)[1] == "L1", 10), path
            response = client.patch(a + path, json={"stock": product}, headers=auth)
            assert response.status_code == 200, response.text
            if client.get(b + path).json()["version"] != response.json()["version"]:
                stale.append(path)
    assert not stale, f"instance B served a pre-write version right after the write: {stale}"
    result = stack.sweep()
    assert result.stale == 0, result.report()


def test_a_flush_bumps_the_epoch_of_every_slot_and_empties_l1_on_every_instance(
    stack: Stack, cluster: RedisClusterServers
) -> None:
    stack.prime()
    before = slot_epochs(cluster, stack.namespace)
    flushes = stack.epoch_bumps("reconnect")
    # the listener's connection lost: a flush (notifications may have been missed)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname ="
            " current_database() AND pid <> pg_backend_pid() AND query ILIKE 'listen%%'"
        )
    stack.wait_epoch_bumps("reconnect", flushes)
    assert all_grew(slot_epochs(cluster, stack.namespace), before), "a slot's epoch stayed"
    stack.drain()
    # nothing cached before the flush is served: not from L1, not from L2
    for base in stack.api_urls:
        assert read(base, "/products/11")[1] != "L1"
    result = stack.sweep()
    assert result.stale == 0, result.report()


def test_without_a_live_invalidator_no_instance_serves_from_the_cluster(
    stack: Stack, cluster: RedisClusterServers
) -> None:
    """DESIGN invariant 8 on a cluster: the liveness key lives in the namespace's slot, not
    the entry's, so each read checks it before its lease script; once the invalidator is
    gone (its key expires) reads are served from Postgres, not from L1 or L2."""
    stack.prime()
    path = "/products/9"
    assert wait_until(lambda: served_from_l1(stack, path), 10)
    alive = f"{{{stack.namespace}}}:capture:alive"
    client = cluster.client()
    try:
        stack.invalidator.signal(signal.SIGSTOP)  # silent, not gone: nobody says goodbye
        try:
            assert wait_until(lambda: not client.exists(alive), 20)
            for base in stack.api_urls:
                assert wait_until(lambda base=base: read(base, path)[1] == "MISS", 10), base
            assert all(
                metric(api, "pgbust_api_l2_bypassed_total", 'reason="capture_not_live"') > 0
                for api in stack.apis
            )
        finally:
            stack.invalidator.signal(signal.SIGCONT)
    finally:
        client.close()


def test_pgbust_status_on_a_cluster_reads_the_namespace_slot_and_its_shards_subscribers(
    stack: Stack,
) -> None:
    def status() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "pgbust", "status", "--json", "--expect-subscribers", "2"],
            env=stack.processes.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode in (0, 1), done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    # both instances SSUBSCRIBE on the channel's shard shortly after /healthz answers
    assert wait_until(lambda: status()["redis"]["subscribers"] == 2, timeout=10), status()
    report = status()
    assert report["errors"] == []
    assert report["redis"]["epoch"] > 0  # the channel slot's epoch: bumped by the start flush
    inv = report["invalidators"]
    assert inv["alive_sender"] and inv["alive_ttl_ms"] > 0
    assert inv["proof_age_ms"] is not None  # a heartbeat heard on the sharded channel
    findings = {f["what"] for f in report["findings"]}
    assert "api_unsubscribed" not in findings and "no_active_invalidator" not in findings


def test_the_audit_on_a_cluster_finds_a_stale_entry_and_invalidates_it_everywhere(
    stack: Stack, cluster: RedisClusterServers
) -> None:
    stack.prime()
    path, entry = "/products/5", "product:5"
    assert wait_until(lambda: served_from_l1(stack, path), 10)
    # a lost invalidation, planted: the live stamp kept, the payload of another time
    value = ClusterNames(stack.namespace).value(entry, entry)
    sync = cluster.client()
    try:
        raw = sync.get(value)
        assert isinstance(raw, bytes), raw
        stamp, _, payload = raw.partition(b"|")
        sync.set(value, stamp + b"|" + payload.replace(b'"stock":', b'"stock":9'))
    finally:
        sync.close()
    report = asyncio.run(_audit(stack, cluster))
    assert report.deleted == [entry], report
    assert report.checked > 0
    # invalidated in Redis and in every instance's L1 (the audit's message)
    for base in stack.api_urls:
        assert wait_until(lambda b=base: read(b, path)[1] != "L1", 5), base
    result = stack.sweep()
    assert result.stale == 0, result.report()


async def _audit(stack: Stack, cluster: RedisClusterServers) -> audit.AuditReport:
    """One consistency audit, as the worker runs it, against the cluster."""
    declared = declaration.load()
    client = cluster_client(cluster.url)
    try:
        cache = RedisCache(
            client, Keyspace(stack.namespace, cluster=True), home_of=declared.home_of
        )
        async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
            return await audit.audit(
                cache, conn, sample=1000, grace_ms=50, served=Entries.of(declared)
            )
    finally:
        await client.aclose()


async def _changed_within(watch: TopologyWatch, within_s: float) -> bool:
    """Look until a look queues a flush (the nodes' views converge in their own time)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await watch.look():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_the_topology_watch_flushes_at_its_first_look_and_after_a_slot_moves_or_a_failover(
    cluster: RedisClusterServers,
) -> None:
    flushes: list[FlushRequest] = []
    client = cluster_client(cluster.url)
    watch = TopologyWatch(client, flushes.append, interval_s=0.1, timeout_s=2.0)
    try:
        assert await watch.look()  # a term's first look: what happened before is unknown
        assert not await watch.look()  # nothing changed, nothing flushed

        master, other = cluster.masters()[:2]
        cluster.move_slot(master.slots[0][0], other)
        assert await _changed_within(watch, 10)

        cluster.failover(cluster.replica_of(other))  # a coordinated switch: no loss, but
        assert await _changed_within(watch, 10)  # the watch cannot tell it from a lossy one
        assert [f.kind for f in flushes] == ["redis_topology"] * 3
    finally:
        await client.aclose()


class Load:
    """Out-of-band writes (psycopg, as psql would) and reads through both instances, each in
    a thread of its own, while a fault happens; what the reads were answered is counted."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.writes = 0
        self.served: Counter[int] = Counter()  # responses by status class
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write), threading.Thread(target=self._read)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        assert wait_until(lambda: self.writes >= 50, 20), "the writer does not write"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def go_on(self, writes: int = 100) -> None:
        """Wait (bounded) until `writes` more writes were committed."""
        now = self.writes
        assert wait_until(lambda: self.writes >= now + writes, 20), "the writer stalled"

    def _write(self) -> None:
        rng = random.Random(15)
        with psycopg.connect(self.stack.database_url, autocommit=True) as conn:
            while not self._stop.is_set():
                product = rng.randint(2, PRODUCTS)  # 1 is the drain's probe
                conn.execute(
                    "UPDATE products SET stock = (stock + 1) %% 1000 WHERE id = %s", (product,)
                )
                self.writes += 1

    def _read(self) -> None:
        rng = random.Random(16)
        while not self._stop.is_set():
            base = rng.choice(self.stack.api_urls)
            product = rng.randint(1, PRODUCTS)
            path = rng.choice(
                [
                    f"/products/{product}",
                    f"/categories/{product % CATEGORIES + 1}/summary",
                    f"/categories/{product % CATEGORIES + 1}/products?limit=20&offset=0",
                ]
            )
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(base + path, timeout=5)
                self.served[response.status_code // 100 * 100] += 1


def topology_flushes(stack: Stack) -> float:
    """Applied flushes one of whose causes was a new cluster topology (a flush merged from
    several causes counts each: its log line and epoch_bumps name only the first)."""
    return metric(
        stack.invalidator, "pgbust_invalidator_flush_causes_total", 'why="redis_topology"'
    )


def ends_flushed_and_fresh(stack: Stack, load: Load, before: float) -> None:
    """After a topology fault under load: the invalidator flushed for the new topology (more
    topology flushes than `before`), every read of the load was a 200, and once drained the
    final sweep finds nothing stale on any instance or master."""
    assert wait_until(lambda: topology_flushes(stack) > before, 20), stack.log()
    assert load.served[200] > 0 and set(load.served) == {200}, load.served
    stack.drain()
    result = stack.sweep()
    assert result.stale == 0, result.report()


def a_master_but_the_channels(stack: Stack, cluster: RedisClusterServers) -> NodeInfo:
    """Not the channel's shard (its failover is a subscriber gap, test_cluster_subscriber.py),
    nor the node every process was given as REDIS_URL (one it must reach to start)."""
    channel_owner = cluster.master_of_slot(cluster.keyslot(f"{{{stack.namespace}}}:x"))
    return next(
        m
        for m in cluster.masters()
        if m.node_id != channel_owner.node_id and f":{m.port}/" not in stack.redis_url
    )


def test_a_cluster_failover_under_out_of_band_writes_flushes_and_ends_fresh(
    stack: Stack, cluster: RedisClusterServers
) -> None:
    stack.prime()
    master = a_master_but_the_channels(stack, cluster)
    before = topology_flushes(stack)
    with Load(stack) as load:
        cluster.failover(cluster.replica_of(master))
        load.go_on()
    # a coordinated switch loses nothing, but the watch cannot tell it from one that does
    ends_flushed_and_fresh(stack, load, before)


def test_a_slot_resharded_under_out_of_band_writes_flushes_and_ends_fresh(
    stack: Stack, cluster: RedisClusterServers
) -> None:
    stack.prime()
    # the slot of a cached product's value (its keys move with MIGRATE while it is read)
    value = ClusterNames(stack.namespace).value("product:3", "product:3")
    slot = cluster.keyslot(value)
    assert cluster.client().exists(value), "product:3 is cached"
    owner = cluster.master_of_slot(slot)
    target = next(m for m in cluster.masters() if m.node_id != owner.node_id)
    before = topology_flushes(stack)
    with Load(stack) as load:
        cluster.move_slot(slot, target)
        load.go_on()
    assert cluster.master_of_slot(slot).node_id == target.node_id
    ends_flushed_and_fresh(stack, load, before)


def test_a_master_killed_under_out_of_band_writes_flushes_after_the_promotion_and_ends_fresh(
    stack: Stack, cluster: RedisClusterServers
) -> None:
    stack.prime()
    victim = a_master_but_the_channels(stack, cluster)
    replica = cluster.replica_of(victim)
    before = topology_flushes(stack)
    with Load(stack) as load:
        cluster.kill(victim.port)
        assert cluster.wait_promoted(replica, timeout=30), cluster.describe()
        load.go_on()  # writes go on after the promotion
    # the promoted replica may miss acknowledged invalidations: once the invalidator sees the
    # new master it bumps every slot's epoch; a Redis node down is a slower read from
    # Postgres, never an error
    ends_flushed_and_fresh(stack, load, before)
