"""Redis evicting keys (allkeys-lru) never revives a dead value (DESIGN invariant 9).

Every guard key of the cache protocol can be evicted: the namespace epoch, a tag generation,
a lease, the server identity, a tag's member set. A dead value is only dead because its stamp
differs from the current epoch/generation; if an evicted guard key came back with a value an
earlier stamp holds, the dead value would be served again. Each test gets a private
redis-server under allkeys-lru. Eviction is forced two ways: by deleting the key as eviction
would (deterministic, every step visible), and by real memory pressure (Redis itself evicts,
tests/support/memory.py makes it pick the victims).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis

from api.keys import category_summary_entry, product_entry
from db.seed import Counts
from pgbust.keys import Keyspace
from pgbust.protocol import Hit, Invalidation, Lease, Targets
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import connect, identity_check
from tests.support.demo import demo_tags, fill
from tests.support.heartbeat import HeartbeatPlayer
from tests.support.memory import evict_by_pressure, limit_memory
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import RedisServer, wait_until
from tests.support.sweep import final_sweep

TAG = "category:3:summary"
PAGE = category_summary_entry(3)  # filed under TAG

Evict = Callable[[list[str]], None]


@pytest.fixture
def lru(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    control = server.client()
    control.config_set("maxmemory-policy", "allkeys-lru")
    control.close()
    yield server
    server.stop(keep_snapshot=False)


@pytest.fixture
def control(lru: RedisServer) -> Iterator[redis.Redis]:
    client = lru.client()
    yield client
    client.close()


@pytest.fixture
async def cache(lru: RedisServer, keyspace: Keyspace) -> AsyncIterator[RedisCache]:
    client = connect(lru.url, keyspace, "api")
    # the tests are the invalidator: they beat, so that reads are served (capture live)
    player = HeartbeatPlayer(lru.url, keyspace).start()
    yield RedisCache(client, keyspace)
    player.stop()
    await client.aclose()


@pytest.fixture(params=["deleted", "lru_pressure"])
def evict(request: pytest.FixtureRequest, control: redis.Redis, keyspace: Keyspace) -> Evict:
    """Take keys away as Redis eviction does: deleted outright, or really evicted by Redis
    under a small maxmemory (allkeys-lru) while every other key of the namespace survives."""

    def delete(victims: list[str]) -> None:
        control.delete(*victims)

    def pressure(victims: list[str]) -> None:
        evict_under_pressure(control, keyspace, victims)

    return delete if request.param == "deleted" else pressure


async def invalidate(
    cache: RedisCache, *, keys: frozenset[str] = frozenset(), tags: frozenset[str] = frozenset()
) -> None:
    targets = Targets(keys, tags)
    await cache.invalidate(targets, Invalidation.of(targets, origin="test"))


def evict_under_pressure(control: redis.Redis, keyspace: Keyspace, victims: list[str]) -> None:
    """Redis itself evicts the victims (allkeys-lru, a limit just above what is used); every
    other key of the namespace is kept the most recently used, and must survive."""
    present = [key for key in victims if control.exists(key)]
    if not present:
        return
    others = [
        key.decode()
        for key in control.scan_iter(match=f"{keyspace.namespace}:*")
        if key.decode() not in present
    ]
    limit_memory(control, "allkeys-lru", 512 << 10)
    try:
        assert evict_by_pressure(control, present, keep=others) > 0
    finally:
        control.config_set("maxmemory", 0)
    assert [key for key in others if not control.exists(key)] == [], "evicted what had to stay"


def killer(cache: RedisCache, guard: str) -> Callable[[], Awaitable[Any]]:
    """What kills PAGE through this guard: a tag invalidation or an epoch bump (a flush)."""
    if guard == "generation":
        return lambda: invalidate(cache, tags=frozenset({TAG}))
    return lambda: cache.bump_epoch("bulk change", origin="test")


def guard_key(keyspace: Keyspace, guard: str) -> str:
    return keyspace.tag_generation(TAG) if guard == "generation" else keyspace.epoch


# --- the protocol ----------------------------------------------------------------------------


@pytest.mark.parametrize("guard", ["generation", "epoch"])
async def test_dead_entry_stays_dead_when_its_guard_key_is_evicted_and_recreated(
    cache: RedisCache, keyspace: Keyspace, control: redis.Redis, evict: Evict, guard: str
) -> None:
    key, value = guard_key(keyspace, guard), keyspace.value(PAGE)
    kill = killer(cache, guard)
    await cache.client.ping()  # connected (the server identity is recorded)
    evict([key])  # the entry is filled while its guard key is missing (or recreated)
    await fill(cache, PAGE, b'{"count":1}')
    # the member set goes too, so the kill below cannot free the value: it stays, dead
    evict([keyspace.tag_members(TAG)])
    await kill()
    assert control.exists(value), "precondition: the dead value is still stored"
    assert await cache.peek(PAGE, tags=demo_tags(PAGE)) is None

    evict([key])
    # recreated by the next reader ...
    assert not isinstance(await cache.get_or_lease(PAGE, tags=demo_tags(PAGE)), Hit)
    assert await cache.peek(PAGE, tags=demo_tags(PAGE)) is None
    # ... or by the next kill after another eviction
    evict([key])
    await kill()
    assert not isinstance(await cache.get_or_lease(PAGE, tags=demo_tags(PAGE)), Hit)
    assert await cache.peek(PAGE, tags=demo_tags(PAGE)) is None


@pytest.mark.parametrize("guard", ["generation", "epoch"])
async def test_fill_is_refused_when_its_guard_key_was_evicted_during_the_load(
    cache: RedisCache, keyspace: Keyspace, control: redis.Redis, guard: str
) -> None:
    """The reader leased, loaded the old row; the writer's change killed the entry; then
    the guard key was evicted. The reader's fill must still be refused."""
    key = guard_key(keyspace, guard)
    await cache.client.ping()
    control.delete(key)  # the lease is granted while the guard key is missing (recreated)
    lease = await cache.get_or_lease(PAGE, tags=demo_tags(PAGE))
    assert isinstance(lease, Lease)
    await killer(cache, guard)()
    control.delete(key)
    assert (
        await cache.fill(
            PAGE,
            lease.token,
            lease.stamp,
            b'{"count":"old"}',
            rows=(),
            since=lease.since,
            tags=demo_tags(PAGE),
        )
        != 1
    )
    assert await cache.peek(PAGE, tags=demo_tags(PAGE)) is None
    assert not isinstance(await cache.get_or_lease(PAGE, tags=demo_tags(PAGE)), Hit)


async def test_fill_is_refused_when_its_lease_was_evicted(
    cache: RedisCache, keyspace: Keyspace, control: redis.Redis
) -> None:
    entry = product_entry(5)
    lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
    assert isinstance(lease, Lease)
    control.delete(keyspace.lease(entry))  # evicted mid-load ...
    await invalidate(
        cache, keys=frozenset({entry})
    )  # ... so this invalidation has no lease to delete
    assert (
        await cache.fill(
            entry,
            lease.token,
            lease.stamp,
            b'{"version":1}',
            rows=(),
            since=lease.since,
            tags=demo_tags(entry),
        )
        == 0
    )
    assert await cache.peek(entry, tags=demo_tags(entry)) is None


async def test_evicted_server_identity_costs_a_flush_not_a_stale_read(
    lru: RedisServer, cache: RedisCache, keyspace: Keyspace, control: redis.Redis
) -> None:
    entry = product_entry(6)
    await fill(cache, entry, b'{"version":1}')
    control.delete(keyspace.server_identity)
    fresh = connect(lru.url, keyspace, "worker")  # a new connection cannot tell: it flushes
    try:
        assert await fresh.ping()
        check = identity_check(fresh)
        assert check is not None and check.bumps == 1
    finally:
        await fresh.aclose()
    assert await cache.peek(entry, tags=demo_tags(entry)) is None
    assert control.get(keyspace.server_identity) is not None


async def test_recreated_guard_keys_never_repeat_a_value(
    cache: RedisCache, keyspace: Keyspace, control: redis.Redis
) -> None:
    """Every value a guard key takes, bumped or recreated after an eviction, is new."""
    gen = keyspace.tag_generation(TAG)
    history: dict[str, list[bytes]] = {keyspace.epoch: [], gen: []}
    for round_ in range(30):
        if round_ % 3 == 0:
            control.delete(keyspace.epoch, gen)  # evicted
        if round_ % 2:
            await invalidate(cache, tags=frozenset({TAG}))  # recreates or bumps the generation
        await cache.get_or_lease(PAGE, tags=demo_tags(PAGE))  # recreates what is missing
        if round_ % 5 == 4:
            await cache.bump_epoch("test", origin="test")
        for key, values in history.items():
            value = control.get(key)
            assert isinstance(value, bytes), f"{key} missing after a reader needed it"
            if not values or values[-1] != value:
                values.append(value)
    for key, values in history.items():
        assert len(values) >= 10, values
        assert len(set(values)) == len(values), f"{key} took a value again: {values}"


# --- real processes: the API instances and the invalidator ------------------------------------


@pytest.fixture
def stack(
    lru: RedisServer, stack_env: dict[str, str], tmp_path: Path, seeded: Counts
) -> Iterator[tuple[ProcessManager, list[ManagedProcess]]]:
    env = {**stack_env, "REDIS_URL": lru.url, "CELERY_BROKER_URL": f"{lru.url[:-2]}/1"}
    manager = ProcessManager(env, tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    try:
        apis = [manager.api("api-a"), manager.api("api-b")]
        manager.invalidator()
        # its listener's first flush has reached both instances: nothing flushes later
        assert wait_until(lambda: all(flushes(api) >= 1 for api in apis), timeout=15)
        yield manager, apis
    finally:
        manager.stop_all()


def flushes(api: ManagedProcess) -> float:
    text = httpx.get(api.base_url + "/metrics", timeout=5).text
    wanted = 'pgbust_api_invalidation_messages_total{kind="flush"} '
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted)
    )


def summary_in_db(database_url: str, category_id: int) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(stock), 0) FROM products WHERE category_id = %s",
            (category_id,),
        ).fetchone()
    assert row is not None
    return {"count": int(row[0]), "total_stock": int(row[1])}


def served(api: ManagedProcess, path: str) -> tuple[dict[str, Any], str]:
    response = httpx.get(api.base_url + path, timeout=5)
    assert response.status_code == 200, response.text
    body = orjson.loads(response.content)
    return {"count": body["count"], "total_stock": body["total_stock"]}, response.headers["X-Cache"]


def test_evicted_tag_generation_serves_no_dead_page_from_l2_or_l1(
    stack: tuple[ProcessManager, list[ManagedProcess]],
    control: redis.Redis,
    keyspace: Keyspace,
    database_url: str,
    pg: psycopg.Connection[Any],
) -> None:
    """psql changes a category; its cached summary dies. Redis evicts (really, allkeys-lru)
    the tag's member set and then its generation: the dead summary must never be served
    again, by Redis or by any API instance's L1."""
    _, apis = stack
    path, value = "/categories/3/summary", keyspace.value(PAGE)
    for api in apis + apis:
        served(api, path)
    assert {served(api, path)[1] for api in apis} == {"L1"}
    assert control.exists(value)

    evict_under_pressure(control, keyspace, [keyspace.tag_members(TAG)])
    gen = keyspace.tag_generation(TAG)
    before = control.get(gen)
    pg.execute("UPDATE products SET stock = stock + 7 WHERE category_id = 3")
    assert wait_until(lambda: control.get(gen) != before, timeout=10), "never invalidated"
    assert control.exists(value), "precondition: the dead summary is still in Redis"
    expected = summary_in_db(database_url, 3)

    evict_under_pressure(control, keyspace, [gen])
    for api in apis + apis:
        body, tier = served(api, path)
        assert body == expected, f"{api.name} served a dead summary from {tier}"
    sweep = final_sweep([a.base_url for a in apis], database_url)
    assert sweep.stale == 0, sweep.report()
