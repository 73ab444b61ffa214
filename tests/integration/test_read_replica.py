"""Read replicas (PGBUST_READ_DATABASE_URL) against a real streaming replica: a private
primary and a hot standby made from it with `pg_basebackup -R`, replay paused on demand.

The race the LSN marker closes: a reader takes a lease after the invalidation of a change
was applied, loads from a replica that has not replayed the change yet, and fills the old
row with a valid lease. With replay paused that reader would fill the old row for as long as
the pause lasts, and keep it afterwards; these tests prove that it reads the primary instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
import redis.asyncio as aioredis

from api.settings import Settings
from db import migrate, seed
from pgbust.cache import Cache as Runtime
from pgbust.devservers import free_port
from pgbust.keys import Keyspace
from pgbust.protocol import Invalidation
from pgbust.redis_cache import RedisCache
from pgbust.replica import parse_lsn
from pgbust.rules import targets_for, write_change
from tests.conftest import API_TOKEN
from tests.support.capture_stack import Stack, metric, start_stack
from tests.support.demo import DEMO
from tests.support.heartbeat import HeartbeatPlayer
from tests.support.inprocess_api import start_api
from tests.support.redis_cluster import RedisClusterServers
from tests.support.servers import PostgresCluster, RedisServer, StreamingReplica, wait_until

PRODUCTS = 60
MakeApi = Callable[..., Awaitable[tuple[httpx.AsyncClient, Runtime]]]


@dataclass
class Replicated:
    primary: PostgresCluster
    replica: StreamingReplica
    primary_url: str
    replica_url: str

    def psql(self, statement: str) -> None:
        """An out-of-band write, typed into psql on the primary (DESIGN invariant 4)."""
        done = subprocess.run(
            [
                str(self.primary.bindir / "psql"),
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.primary_url,
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr

    def version(self, url: str, product_id: int) -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT version FROM products WHERE id = %s", (product_id,)
            ).fetchone()
        assert row is not None
        return int(row[0])

    def current_lsn(self) -> int:
        with psycopg.connect(self.primary_url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        return parse_lsn(str(row[0]))


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    # not under pytest's basetemp: the postgres user must reach it (see test_wal_capture.py)
    folder = Path(tempfile.mkdtemp(prefix="pgbust-replica-pg-"))
    # logical: the WAL-capture stack runs on it too (the replica streams every database)
    primary = PostgresCluster(folder / "primary", {"wal_level": "logical"})
    replica = StreamingReplica(folder / "replica", primary)
    try:
        primary.init()
        primary.start()
        with psycopg.connect(primary.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE shop")
        url = f"postgresql://postgres@127.0.0.1:{primary.port}/shop"
        migrate.upgrade(url)
        seed.seed(url, products=PRODUCTS, categories=4)
        replica.init()
        replica.start()
        assert wait_until(replica.caught_up, 30), "the replica never caught up"
        yield Replicated(primary, replica, url, replica.url("shop"))
    finally:
        for server in (replica, primary):
            with contextlib.suppress(subprocess.CalledProcessError):
                server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def resumed(replicated: Replicated) -> Iterator[Replicated]:
    """The replica replaying, before and after the test (a failed test may leave it paused)."""
    replicated.replica.resume_replay()
    yield replicated
    replicated.replica.resume_replay(wait_caught_up=False)


def metric_of(runtime: Runtime, name: str, **labels: str) -> float:
    return runtime.metrics.registry.get_sample_value(name, labels) or 0.0


def replica_loads(runtime: Runtime) -> float:
    return metric_of(runtime, "pgbust_api_db_loads_by_server_total", server="replica")


def primary_loads(runtime: Runtime) -> float:
    return metric_of(runtime, "pgbust_api_db_loads_by_server_total", server="primary")


def fallbacks(runtime: Runtime, reason: str) -> float:
    return metric_of(runtime, "pgbust_api_replica_fallbacks_total", reason=reason)


# --- the library in process: the test is the invalidator --------------------------------------


@pytest.fixture
async def l2(redis_server: RedisServer, keyspace: Keyspace) -> AsyncIterator[RedisCache]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield RedisCache(client, keyspace)
    await client.aclose()


@pytest.fixture
async def make_api(
    resumed: Replicated,
    redis_server: RedisServer,
    namespace: str,
    live_capture: HeartbeatPlayer,  # no invalidator: the test invalidates (and beats) itself
) -> AsyncIterator[MakeApi]:
    async with AsyncExitStack() as stack:

        async def make(replica_url: str | None = None) -> tuple[httpx.AsyncClient, Runtime]:
            settings = Settings(
                database_url=resumed.primary_url,
                read_database_url=replica_url or resumed.replica_url,
                redis_url=redis_server.url,
                namespace=namespace,
                api_token=API_TOKEN,
                hot_sample_rate=0.0,
            )
            client, runtime = await start_api(stack, settings)
            assert runtime.subscriber is not None
            return client, runtime

        yield make


async def invalidate_product(l2: RedisCache, product_id: int, lsn: int | None) -> None:
    """What the invalidator does after a committed UPDATE of a product (the demo's rules),
    raising the marker to `lsn` as it does with a read replica (None: like a worker's retry,
    which leaves the marker alone)."""
    row = {"id": product_id, "category_id": 1 + product_id % 4}
    targets = targets_for(DEMO, write_change("public.products", "update", old=row, new=row))
    await l2.invalidate(targets, Invalidation.of(targets, origin="cdc"), lsn=lsn)


async def read_version(client: httpx.AsyncClient, product_id: int) -> tuple[int, str]:
    response = await client.get(f"/products/{product_id}")
    assert response.status_code == 200, response.text
    return int(response.json()["version"]), response.headers["X-Cache"]


async def read_until(client: httpx.AsyncClient, product_id: int, version: int) -> str:
    """Read until the instance serves `version` (its L1 heard the invalidation), bounded;
    returns the X-Cache of that read. Never an older version after a newer one."""
    deadline = time.monotonic() + 5
    while True:
        got, source = await read_version(client, product_id)
        if got == version:
            return source
        assert got < version, f"product {product_id}: version {got} past {version}"
        assert time.monotonic() < deadline, f"product {product_id} stuck at version {got}"
        await asyncio.sleep(0.01)


async def test_a_leased_load_reads_the_replica_once_it_replayed_up_to_the_marker(
    make_api: MakeApi, resumed: Replicated, l2: RedisCache
) -> None:
    client, runtime = await make_api()
    await l2.raise_lsn(resumed.current_lsn())
    assert wait_until(resumed.replica.caught_up, 10)
    assert await read_version(client, 7) == (1, "MISS")
    assert replica_loads(runtime) == 1
    assert primary_loads(runtime) == 0
    assert await read_version(client, 7) == (1, "L1")
    health = (await client.get("/healthz")).json()
    assert health["replica"]["state"] == "ok" and "/" in health["replica"]["replay_lsn"]


async def test_with_replay_paused_an_out_of_band_update_is_loaded_from_the_primary_not_refilled_old(
    make_api: MakeApi, resumed: Replicated, l2: RedisCache, keyspace: Keyspace
) -> None:
    client, runtime = await make_api()
    product = 11
    before = resumed.version(resumed.primary_url, product)
    await l2.raise_lsn(resumed.current_lsn())
    assert wait_until(resumed.replica.caught_up, 10)
    assert await read_version(client, product) == (before, "MISS")  # filled from the replica
    resumed.replica.pause_replay()
    resumed.psql(f"UPDATE products SET stock = stock + 1 WHERE id = {product}")
    # the invalidator's apply: the marker past the commit, with the invalidation
    await invalidate_product(l2, product, resumed.current_lsn())
    assert await read_until(client, product, before + 1) == "MISS"
    # the replica still has the old row: the new one came from the primary, and was filled
    assert resumed.version(resumed.replica_url, product) == before
    assert fallbacks(runtime, "behind") == 1
    assert await l2.peek(f"product:{product}", tags=()) is not None
    for _ in range(3):
        assert (await read_version(client, product))[0] == before + 1
    resumed.replica.resume_replay()
    # caught up again: the next change's load is the replica's
    replica_before = replica_loads(runtime)
    resumed.psql(f"UPDATE products SET stock = stock + 1 WHERE id = {product}")
    await invalidate_product(l2, product, resumed.current_lsn())
    assert wait_until(resumed.replica.caught_up, 10)
    assert await read_until(client, product, before + 2) == "MISS"
    assert replica_loads(runtime) == replica_before + 1


async def test_a_missing_marker_sends_leased_loads_to_the_primary(
    make_api: MakeApi, resumed: Replicated, l2: RedisCache, keyspace: Keyspace
) -> None:
    client, runtime = await make_api()
    assert await l2.client.exists(keyspace.lsn_marker) == 0  # nobody raised it yet
    assert await read_version(client, 21) == (1, "MISS")
    assert fallbacks(runtime, "no_marker") == 1 and replica_loads(runtime) == 0
    await l2.raise_lsn(resumed.current_lsn())
    assert wait_until(resumed.replica.caught_up, 10)
    assert await read_version(client, 22) == (1, "MISS")
    assert replica_loads(runtime) == 1
    # evicted (or lost with a Redis restart or flush): the primary again, even caught up
    await l2.client.delete(keyspace.lsn_marker)
    resumed.psql("UPDATE products SET stock = stock + 1 WHERE id = 22")
    await invalidate_product(l2, 22, None)
    assert await read_until(client, 22, 2) == "MISS"
    assert fallbacks(runtime, "no_marker") == 2 and replica_loads(runtime) == 1


async def test_a_write_through_the_api_raises_the_marker_past_its_commit(
    make_api: MakeApi, resumed: Replicated, l2: RedisCache, keyspace: Keyspace
) -> None:
    # read-your-writes (DESIGN invariant 6) with a lagging replica: the write's own
    # invalidation must send the writer's next read to the primary
    client, runtime = await make_api()
    product = 31
    assert await read_version(client, product) == (1, "MISS")
    resumed.replica.pause_replay()
    response = await client.patch(
        f"/products/{product}",
        json={"stock": 1234},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert response.status_code == 200, response.text
    marker = await l2.client.get(keyspace.lsn_marker)
    assert marker is not None and int(marker, 16) > 0
    version, source = await read_version(client, product)
    assert (version, source) == (2, "MISS")
    assert fallbacks(runtime, "behind") == 1


async def test_an_unreachable_replica_costs_one_bounded_wait_then_misses_read_the_primary(
    make_api: MakeApi, resumed: Replicated, l2: RedisCache
) -> None:
    # nothing listens there: the API still starts, and serves every read from the primary
    client, runtime = await make_api(f"postgresql://postgres@127.0.0.1:{free_port()}/shop")
    await l2.raise_lsn(resumed.current_lsn())
    started = time.monotonic()
    assert await read_version(client, 41) == (1, "MISS")
    assert await read_version(client, 42) == (1, "MISS")  # skipped: no second wait
    assert time.monotonic() - started < 3.0
    assert fallbacks(runtime, "replica_error") == 2 and primary_loads(runtime) == 2
    health = await client.get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["replica"]["state"].startswith("error")


async def test_a_server_that_is_not_a_standby_is_never_read_as_a_replica(
    make_api: MakeApi, resumed: Replicated, l2: RedisCache
) -> None:
    # the primary itself as the "replica" (a promoted one looks the same): not in recovery
    client, runtime = await make_api(resumed.primary_url)
    await l2.raise_lsn(resumed.current_lsn())
    assert await read_version(client, 45) == (1, "MISS")
    assert fallbacks(runtime, "not_replaying") == 1 and replica_loads(runtime) == 0
    health = (await client.get("/healthz")).json()
    assert health["replica"]["state"].startswith("not replaying")


# --- real processes: the invalidator keeps the marker ------------------------------------------


WAL_NAME = "pgbust_replica_test"


@pytest.fixture(scope="module")
def wal_database(replicated: Replicated) -> Replicated:
    """A database of its own captured from the WAL (`python -m db upgrade` with
    PGBUST_CAPTURE=wal drops the NOTIFY triggers, which the other tests' database keeps)."""
    with psycopg.connect(replicated.primary.admin_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE shop_wal")
    url = f"postgresql://postgres@127.0.0.1:{replicated.primary.port}/shop_wal"
    migrate.upgrade(url)
    seed.seed(url, products=PRODUCTS, categories=4)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PGBUST_CAPTURE": "wal",
        "PGBUST_WAL_SLOT": WAL_NAME,
        "PGBUST_WAL_PUBLICATION": WAL_NAME,
    }
    done = subprocess.run(
        [sys.executable, "-m", "db", "upgrade"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],  # where pgbust.toml is
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"db upgrade (wal) failed:\n{done.stdout}{done.stderr}"
    assert wait_until(replicated.replica.caught_up, 30)
    return dataclasses.replace(
        replicated, primary_url=url, replica_url=replicated.replica.url("shop_wal")
    )


@dataclass
class Running:
    stack: Stack
    db: Replicated  # its database on the primary and on the replica


@pytest.fixture(params=["notify", "wal"])
def running(
    request: pytest.FixtureRequest, resumed: Replicated, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Running]:
    """An invalidator and two API instances reading the replica, capturing as the param says
    ("cluster": NOTIFY capture, the caches on the session's Redis Cluster; the private Redis
    is then only the Celery broker)."""
    db = resumed
    env = {"PGBUST_READ_DATABASE_URL": resumed.replica_url, "PGBUST_HOT_SAMPLE_RATE": "0"}
    if request.param == "cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        env.update(REDIS_URL=cluster.url, PGBUST_REDIS_CLUSTER="true")
        stack = start_stack(db.primary_url, redis_server, tmp_path, env=env)
        try:
            yield Running(dataclasses.replace(stack, redis_url=cluster.url, cluster=True), db)
        finally:
            stack.processes.stop_all()
        return
    if request.param == "wal":
        db = request.getfixturevalue("wal_database")
        env.update(
            PGBUST_READ_DATABASE_URL=db.replica_url,
            PGBUST_CAPTURE="wal",
            PGBUST_WAL_SLOT=WAL_NAME,
            PGBUST_WAL_PUBLICATION=WAL_NAME,
        )
    stack = start_stack(db.primary_url, redis_server, tmp_path, env=env)
    try:
        yield Running(stack, db)
    finally:
        stack.processes.stop_all()


def api_metric(stack: Stack, name: str, labels: str) -> float:
    return sum(metric(api, name, labels) for api in stack.apis)


def http_version(base_url: str, product_id: int) -> int:
    response = httpx.get(f"{base_url}/products/{product_id}", timeout=5)
    assert response.status_code == 200, response.text
    return int(response.json()["version"])


@pytest.mark.parametrize("running", ["notify", "wal", "cluster"], indirect=True)
def test_stack_with_replay_paused_serves_an_out_of_band_update_from_the_primary_then_the_replica(
    running: Running,
) -> None:
    stack, resumed = running.stack, running.db
    stack.prime()
    assert api_metric(stack, "pgbust_api_db_loads_by_server_total", 'server="replica"') > 0
    product = 5
    before = resumed.version(resumed.primary_url, product)
    resumed.replica.pause_replay()
    resumed.psql(f"UPDATE products SET price_cents = price_cents + 1 WHERE id = {product}")
    stack.drain()  # the invalidation reached every instance
    for base in stack.api_urls:
        assert http_version(base, product) == before + 1
    assert resumed.version(resumed.replica_url, product) == before  # still the old row there
    assert api_metric(stack, "pgbust_api_replica_fallbacks_total", 'reason="behind"') > 0
    # while the replica is still paused, every tier equals the primary
    paused = stack.sweep()
    assert paused.stale == 0, paused.report()
    resumed.replica.resume_replay()

    # caught up: misses go back to the replica (bounded: the marker moves with every batch)
    def a_replica_load_after_a_change() -> bool:
        loads = api_metric(stack, "pgbust_api_db_loads_by_server_total", 'server="replica"')
        resumed.psql(f"UPDATE products SET stock = stock + 1 WHERE id = {product}")
        version = resumed.version(resumed.primary_url, product)
        assert wait_until(resumed.replica.caught_up, 10)
        assert wait_until(lambda: http_version(stack.api_urls[0], product) == version, 10)
        return api_metric(stack, "pgbust_api_db_loads_by_server_total", 'server="replica"') > loads

    assert wait_until(a_replica_load_after_a_change, 15, interval=0.1)
    stack.assert_every_tier_fresh()
    # evicted (or flushed): with nothing written, the invalidator writes it again at its next
    # capture probe, within a few heartbeats
    client = (
        redis.RedisCluster.from_url(stack.redis_url)
        if stack.cluster
        else redis.Redis.from_url(stack.redis_url)
    )
    try:
        marker = Keyspace(stack.namespace, cluster=stack.cluster).lsn_marker
        assert client.delete(marker) == 1
        assert wait_until(lambda: client.exists(marker) == 1, 10)
    finally:
        client.close()
    # and it always knew an LSN to raise it to (never had to drop it)
    assert metric(stack.invalidator, "pgbust_invalidator_errors_total", 'kind="lsn_marker"') == 0


def test_an_invalidator_without_the_setting_keeps_no_marker_so_replica_readers_use_the_primary(
    resumed: Replicated, redis_server: RedisServer, tmp_path: Path
) -> None:
    # a deployment that set PGBUST_READ_DATABASE_URL for the API only: safe, and visible
    stack = start_stack(resumed.primary_url, redis_server, tmp_path)
    try:
        api = stack.processes.api(
            "api-replica", env={"PGBUST_READ_DATABASE_URL": resumed.replica_url}
        )
        stack.drain()
        for pid in range(50, 56):
            assert http_version(api.base_url, pid) >= 1
        assert metric(api, "pgbust_api_replica_fallbacks_total", 'reason="no_marker"') >= 6
        assert metric(api, "pgbust_api_db_loads_by_server_total", 'server="replica"') == 0
    finally:
        stack.processes.stop_all()


@dataclass
class Observed:
    sent: float
    product: int
    version: int


def test_chaos_replay_paused_while_out_of_band_writes_and_readers_go_on_then_resumed(
    running: Running,
) -> None:
    stack, resumed = running.stack, running.db
    stack.prime()
    stop = threading.Event()
    acked: dict[int, list[tuple[float, int]]] = {}  # product -> (ack time, version)
    reads: list[Observed] = []
    errors: list[str] = []
    products = list(range(2, PRODUCTS + 1))

    def writer() -> None:
        with psycopg.connect(resumed.primary_url, autocommit=True) as conn:
            while not stop.is_set():
                pid = random.choice(products[:20])  # a hot set: written and read often
                row = conn.execute(
                    "UPDATE products SET stock = stock + 1 WHERE id = %s RETURNING version",
                    (pid,),
                ).fetchone()
                assert row is not None
                acked.setdefault(pid, []).append((time.monotonic(), int(row[0])))
                time.sleep(0.02)

    def reader(base: str) -> None:
        with httpx.Client(base_url=base, timeout=5) as client:
            while not stop.is_set():
                pid = random.choice(products[:20] if random.random() < 0.8 else products)
                path = random.choice([f"/products/{pid}", f"/categories/{1 + pid % 4}/summary"])
                sent = time.monotonic()
                try:
                    response = client.get(path)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                if response.status_code != 200:
                    errors.append(f"{path}: {response.status_code}")
                elif path.startswith("/products/"):
                    reads.append(Observed(sent, pid, int(response.json()["version"])))

    threads = [threading.Thread(target=writer, daemon=True)] + [
        threading.Thread(target=reader, args=(base,), daemon=True)
        for base in stack.api_urls
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)  # replaying: loads are the replica's
        resumed.replica.pause_replay()
        paused_at = time.monotonic()
        while time.monotonic() - paused_at < 4.0:
            time.sleep(0.1)
            assert not errors, errors[:5]
        resumed.replica.resume_replay()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not errors, errors[:5]
    # no read returned a version older than one acknowledged a second before it was sent:
    # a fill from the paused replica would have served its old row for the whole pause
    late = []
    for seen in reads:
        older = [v for at, v in acked.get(seen.product, []) if at < seen.sent - 1.0]
        if older and seen.version < max(older):
            late.append(seen)
    assert not late, f"{len(late)} of {len(reads)} reads stale by over a second: {late[:5]}"
    assert len(reads) > 200
    behind = api_metric(stack, "pgbust_api_replica_fallbacks_total", 'reason="behind"')
    replica = api_metric(stack, "pgbust_api_db_loads_by_server_total", 'server="replica"')
    primary = api_metric(stack, "pgbust_api_db_loads_by_server_total", 'server="primary"')
    print(f"reads {len(reads)}; loads: replica {replica}, primary {primary} (behind {behind})")
    assert behind > 0 and replica > 0
    stack.assert_every_tier_fresh()
