"""Redis restarted from an old snapshot must not resurrect values (invariant 5).

A snapshot taken before an invalidation still holds the invalidated value, stamped with the
epoch of that time. Every cache client is made by `pgbust.redis_connect.connect`, whose
connection hook checks the server's run_id and bumps the epoch on a new server before the
connection is used — so the very first read after the restart is fresh, whether or not any
subscriber has reconnected yet. Each test runs its own redis-server (it gets SIGKILLed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, RedisError, ResponseError

from api.keys import product_entry
from api.settings import Settings
from db.seed import Counts
from pgbust.cache import Cache as Runtime
from pgbust.keys import Keyspace
from pgbust.protocol import Hit, Invalidation, Lease, Targets
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import connect, identity_check, run_id_of
from tests.conftest import API_TOKEN
from tests.support.demo import demo_tags, fill
from tests.support.heartbeat import HeartbeatPlayer
from tests.support.inprocess_api import start_api
from tests.support.servers import RedisServer

T = TypeVar("T")
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def private_redis(tmp_path: Path, keyspace: Keyspace) -> Iterator[RedisServer]:
    """These tests are the invalidator: capture is live (the key, without TTL, survives the
    snapshots and restarts below)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    plain = server.client()
    plain.set(keyspace.capture_alive, "test")
    plain.close()
    yield server
    server.stop(keep_snapshot=False)


def restart_from_snapshot(server: RedisServer) -> None:
    server.stop(keep_snapshot=True)  # SIGKILL: no shutdown save, dump.rdb is the old SAVE
    server.start()


async def first_answer(call: Callable[[], Awaitable[T]]) -> T:
    """The first reply of the restarted server: a pooled connection to the killed server
    fails once (ConnectionError, no retry configured); the pool then opens a new one."""
    for _ in range(2):
        try:
            return await call()
        except ConnectionError:
            continue
    return await call()


async def invalidate(cache: RedisCache, entry: str) -> None:
    targets = Targets(keys=frozenset({entry}))
    await cache.invalidate(targets, Invalidation.of(targets, origin="api"))


# --- the connection hook itself ------------------------------------------------------------


async def test_new_connections_to_a_new_server_bump_the_epoch_exactly_once(
    private_redis: RedisServer, keyspace: Keyspace
) -> None:
    plain = private_redis.client()
    plain.set(keyspace.server_identity, "run-id-of-the-server-before")
    plain.set(keyspace.epoch, "7")
    pubsub = plain.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(keyspace.channel)
    assert pubsub.get_message(timeout=2) is not None  # subscribed
    clients = [connect(private_redis.url, keyspace, "api") for _ in range(3)]
    try:
        # 3 processes' clients open 5 connections each, all at once
        connections = await asyncio.gather(
            *(
                c.connection_pool.get_connection()  # type: ignore[no-untyped-call]
                for c in clients
                for _ in range(5)
            )
        )
        for client in clients:
            for conn in connections:
                if conn in client.connection_pool._in_use_connections:
                    await client.connection_pool.release(conn)
        checks = [identity_check(c) for c in clients]
        assert all(check is not None for check in checks)
        assert sum(check.checks for check in checks if check) == 15
        assert sum(check.bumps for check in checks if check) == 1
        run_id = run_id_of(plain.info("server"))
        assert plain.get(keyspace.server_identity) == run_id.encode()
        epoch = int(plain.get(keyspace.epoch) or 0)
        assert epoch > 7
        flushes = []
        while (message := pubsub.get_message(timeout=0.2)) is not None:
            flushes.append(Invalidation.decode(message["data"]))
        assert [(m.flush, m.reason, m.origin) for m in flushes] == [
            (True, "redis server restarted", "api")
        ]
        # a later connection (a new process) to the same server changes nothing
        late = connect(private_redis.url, keyspace, "worker", decode_responses=True)
        assert await late.get(keyspace.epoch) == str(epoch)
        late_check = identity_check(late)
        assert late_check is not None and (late_check.checks, late_check.bumps) == (1, 0)
        await late.aclose()
    finally:
        for client in clients:
            await client.aclose()
        pubsub.close()
        plain.close()


@pytest.mark.parametrize("pipelined", [False, True], ids=["redis-py", "pipelined"])
async def test_first_read_after_restart_from_old_snapshot_is_not_resurrected(
    private_redis: RedisServer, keyspace: Keyspace, pipelined: bool
) -> None:
    """pipelined: the read path's scripts go over the lane's own connection, which runs the
    same check (pgbust.redis_lane)."""
    entry = product_entry(5)
    client = connect(private_redis.url, keyspace, "api")
    control = aioredis.Redis.from_url(private_redis.url)  # no hook: what the bug looked like
    cache = RedisCache(client, keyspace, pipelined=pipelined)
    unchecked = RedisCache(control, keyspace)
    try:
        await fill(cache, entry, b'{"version":1}')
        private_redis.snapshot()  # holds v1
        await invalidate(cache, entry)  # the write of v2
        await fill(cache, entry, b'{"version":2}')
        assert await cache.peek(entry, tags=demo_tags(entry)) == b'{"version":2}'
        before = await cache.current_epoch()
        restart_from_snapshot(private_redis)

        # precondition: the restarted server really serves v1 to a client without the check
        resurrected = await unchecked.get_or_lease(entry, tags=demo_tags(entry))
        assert isinstance(resurrected, Hit) and resurrected.payload == b'{"version":1}'
        await unchecked.release_lease(entry, "nobody")

        # the very first read through a checked client: dead, a lease to reload from Postgres
        first = await first_answer(lambda: cache.get_or_lease(entry, tags=demo_tags(entry)))
        assert isinstance(first, Lease), first
        # (pipelined: the lane's new connection was checked; redis-py's pooled one to the
        # killed server fails once on this read)
        assert await first_answer(cache.current_epoch) > before
        check = identity_check(client)
        assert check is not None and check.bumps == 2  # first connect ever, and the restart
        # the unchecked client now sees the bump too: the epoch lives in Redis
        assert not isinstance(await unchecked.get_or_lease(entry, tags=demo_tags(entry)), Hit)
    finally:
        cache.close()
        await client.aclose()
        await control.aclose()


async def test_fill_with_a_lease_from_the_snapshot_is_refused(
    private_redis: RedisServer, keyspace: Keyspace
) -> None:
    """A reader leased before the SAVE, the lease is in the snapshot: its late fill of the
    value it read before the invalidation must not land on the restarted server."""
    entry = product_entry(5)
    client = connect(private_redis.url, keyspace, "api")
    cache = RedisCache(client, keyspace)
    try:
        lease = await cache.get_or_lease(entry, lease_ms=60_000, tags=demo_tags(entry))
        assert isinstance(lease, Lease)
        private_redis.snapshot()  # holds the lease
        await invalidate(cache, entry)  # deletes the lease on the old server
        restart_from_snapshot(private_redis)  # ... and the snapshot brings it back
        stored = await first_answer(
            lambda: cache.fill(
                entry,
                lease.token,
                lease.stamp,
                b'{"version":1}',
                rows=(),
                since=lease.since,
                tags=demo_tags(entry),
            )
        )
        assert stored == -1
        assert await cache.peek(entry, tags=demo_tags(entry)) is None
    finally:
        await client.aclose()


async def test_a_connection_whose_check_fails_is_never_used(
    private_redis: RedisServer, keyspace: Keyspace
) -> None:
    """Fail closed: a user that may not run the script gets errors, not unchecked reads."""
    plain = private_redis.client()
    acl = ["noeval", "on", "nopass", "~*", "&*", "+@all", "-eval"]
    plain.execute_command("ACL", "SETUSER", *acl)  # type: ignore[no-untyped-call]
    plain.set(keyspace.value(product_entry(5)), b"0.0|resurrected")
    url = f"redis://noeval@127.0.0.1:{private_redis.port}/0"
    client = connect(url, keyspace, "api")
    try:
        with pytest.raises(RedisError):
            await client.get(keyspace.value(product_entry(5)))
        check = identity_check(client)
        assert check is not None and check.checks == 0
        assert client.connection_pool._in_use_connections == set()
        assert all(not c.is_connected for c in client.connection_pool._available_connections)
    finally:
        await client.aclose()
        plain.close()


def test_run_id_of_info_replies() -> None:
    raw = b"# Server\r\nredis_version:7.0.0\r\nrun_id:abc123\r\ntcp_port:6379\r\n"
    assert run_id_of(raw) == "abc123"
    assert run_id_of(raw.decode()) == "abc123"
    assert run_id_of({"run_id": "abc123"}) == "abc123"
    with pytest.raises(ResponseError):
        run_id_of(b"# Server\r\nredis_version:7.0.0\r\n")


# --- the API in process: the subscriber has not reconnected yet -----------------------------


@pytest.fixture
async def api_pair(
    database_url: str, private_redis: RedisServer, namespace: str, seeded: Counts
) -> AsyncIterator[list[tuple[httpx.AsyncClient, Runtime]]]:
    player = HeartbeatPlayer(private_redis.url, Keyspace(namespace)).start()
    async with AsyncExitStack() as stack:
        stack.callback(player.stop)
        pair = []
        for _ in range(2):
            settings = Settings(
                database_url=database_url,
                redis_url=private_redis.url,
                namespace=namespace,
                api_token=API_TOKEN,
                hot_sample_rate=0.0,
            )
            client, runtime = await start_api(stack, settings)
            assert runtime.subscriber is not None
            pair.append((client, runtime))
        yield pair


async def test_api_first_reads_after_restart_from_old_snapshot_are_fresh(
    api_pair: list[tuple[httpx.AsyncClient, Runtime]], private_redis: RedisServer
) -> None:
    (a, runtime_a), (b, runtime_b) = api_pair
    for client in (a, b):
        for _ in range(2):
            assert (await client.get("/products/5")).status_code == 200
    old = (await b.get("/products/5")).json()["version"]
    private_redis.snapshot()  # L2 holds the old version
    patched = await a.patch("/products/5", json={"stock": 7}, headers=AUTH)
    assert patched.status_code == 200
    new = patched.json()["version"]
    assert new > old
    for client in (a, b):
        assert (await client.get("/products/5")).json()["version"] == new  # L2 holds v2 now

    # hold both subscribers in their reconnect back-off (L1 flushed and bypassed): the
    # window in which the read path used to serve the snapshot from Redis
    release = asyncio.Event()
    for runtime in (runtime_a, runtime_b):
        subscriber = runtime.subscriber
        assert subscriber is not None
        real_session = subscriber._session

        async def held(real_session: object = real_session) -> None:
            await release.wait()
            await real_session()  # type: ignore[operator]

        subscriber._session = held  # type: ignore[method-assign]
    private_redis.stop(keep_snapshot=True)
    for runtime in (runtime_a, runtime_b):
        subscriber = runtime.subscriber
        assert subscriber is not None
        await wait_for_state(runtime, "disconnected")
        assert not runtime.l1.enabled
    private_redis.start()

    # the first read of each may hit its pooled connection to the killed server (an error:
    # served from Postgres); the next ones go to the restarted server through new connections
    reads = [await c.get("/products/5") for c in (a, b) for _ in range(5)]
    served = [(r.json()["version"], r.headers["X-Cache"]) for r in reads]
    assert {version for version, _ in served} == {new}, served
    assert "L2" in {tier for _, tier in served}, served  # Redis did serve reads meanwhile

    release.set()  # the subscribers come back; nothing changes for readers
    for runtime in (runtime_a, runtime_b):
        await wait_for_state(runtime, "subscribed")
    assert {(await c.get("/products/5")).json()["version"] for c in (a, b)} == {new}


async def wait_for_state(runtime: Runtime, state: str, within_s: float = 10.0) -> None:
    subscriber = runtime.subscriber
    assert subscriber is not None
    deadline = asyncio.get_running_loop().time() + within_s
    while subscriber.state != state:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"subscriber state {subscriber.state}, wanted {state}")
        await asyncio.sleep(0.01)
