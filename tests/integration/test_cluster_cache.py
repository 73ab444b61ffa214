"""RedisCache on a real Redis Cluster: the API's read path and the invalidator's writes go
through the cluster design (pgbust/cluster_reads.py, pgbust/cluster_invalidation.py), every
script in one slot, the tags and row tags of other slots guarded outside the scripts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pgbust import declaration
from pgbust.cache import Cache
from pgbust.cluster_invalidation import INLINE_MEMBER_LIMIT
from pgbust.keys import ClusterNames, Keyspace
from pgbust.loaders import Loaders
from pgbust.protocol import NOT_LIVE, Heartbeat, Hit, Invalidation, Lease, Targets
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import cluster_client
from pgbust.replica import UNKNOWN_LSN
from pgbust.settings import CacheSettings
from pgbust.slots import key_slot
from tests.support.redis_cluster import RedisClusterServers
from tests.support.servers import RedisServer
from worker import jobs

# entries as the demo declares them: a product filed under its category, a page filed under
# its category and under a second tag, holding rows with row tags
PRODUCT, PRODUCT_TAGS = "product:1", ("category:3",)
PAGE, PAGE_TAGS = "category:3:products:20:0", ("category:3", "catalog")
ROWS = ("row:product:1", "row:product:2")


def home_of(entry: str) -> str:
    return {PRODUCT: "category:3", PAGE: "category:3"}.get(entry, entry)


@pytest.fixture
async def client(redis_cluster: RedisClusterServers) -> AsyncIterator[aioredis.Redis]:
    client = cluster_client(redis_cluster.url)
    yield client
    await client.aclose()


@pytest.fixture
async def cache(client: aioredis.Redis, namespace: str) -> AsyncIterator[RedisCache]:
    cache = RedisCache(client, Keyspace(namespace, cluster=True), home_of=home_of)
    await cache.heartbeat(Heartbeat(500, sender="test"), valid_ms=60_000)  # capture "alive"
    yield cache
    cache.close()


async def _lease(cache: RedisCache, entry: str, tags: tuple[str, ...]) -> Lease:
    lease = await cache.get_or_lease(entry, tags=tags)
    assert isinstance(lease, Lease), lease
    return lease


async def _fill(
    cache: RedisCache, entry: str, tags: tuple[str, ...], lease: Lease, payload: bytes
) -> int:
    rows = ROWS if entry == PAGE else ()
    return await cache.fill(
        entry, lease.token, lease.stamp, payload, tags=tags, rows=rows, since=lease.since
    )


async def _fill_eventually(
    cache: RedisCache, entry: str, tags: tuple[str, ...], payload: bytes
) -> None:
    """Lease and fill until stored: for CLOCK_SKEW_US after a tag of another slot was bumped
    or first used, its entries' fills are refused (pgbust/cluster_reads.py)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        lease = await _lease(cache, entry, tags)
        if await _fill(cache, entry, tags, lease, payload) == 1:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{entry} was never filled")


async def _invalidate(
    cache: RedisCache, keys: frozenset[str] = frozenset(), tags: frozenset[str] = frozenset()
) -> None:
    targets = Targets(keys, tags)
    await cache.invalidate(targets, Invalidation.of(targets, origin="cdc"))


async def test_on_a_cluster_reads_are_not_live_without_the_capture_liveness_key(
    cache: RedisCache, client: aioredis.Redis
) -> None:
    await client.delete(cache.keyspace.capture_alive)
    assert await cache.get_or_lease(PRODUCT, tags=PRODUCT_TAGS) is NOT_LIVE


async def test_on_a_cluster_a_fill_hits_and_an_invalidation_of_the_entry_or_its_home_kills_it(
    cache: RedisCache,
) -> None:
    lease = await _lease(cache, PRODUCT, PRODUCT_TAGS)
    assert await _fill(cache, PRODUCT, PRODUCT_TAGS, lease, b"v1") == 1
    assert await cache.get_or_lease(PRODUCT, tags=PRODUCT_TAGS) == Hit(b"v1")
    assert await cache.peek(PRODUCT, tags=PRODUCT_TAGS) == b"v1"

    await _invalidate(cache, keys=frozenset({PRODUCT}))
    lease = await _lease(cache, PRODUCT, PRODUCT_TAGS)
    assert await _fill(cache, PRODUCT, PRODUCT_TAGS, lease, b"v2") == 1

    await _invalidate(cache, tags=frozenset({"category:3"}))
    assert await cache.peek(PRODUCT, tags=PRODUCT_TAGS) is None
    await _lease(cache, PRODUCT, PRODUCT_TAGS)


async def test_on_a_cluster_a_page_dies_when_a_tag_or_row_tag_of_another_slot_is_bumped(
    cache: RedisCache, client: aioredis.Redis
) -> None:
    names = ClusterNames(cache.keyspace.namespace)
    # first fill: the row tags have no generation yet (created now, refused, -2)
    lease = await _lease(cache, PAGE, PAGE_TAGS)
    assert await _fill(cache, PAGE, PAGE_TAGS, lease, b"page") == -2
    for bumped in ("catalog", "row:product:2"):
        await _fill_eventually(cache, PAGE, PAGE_TAGS, b"page")
        hit = await cache.get_or_lease(PAGE, tags=PAGE_TAGS)
        assert hit == Hit(b"page", ("catalog", *ROWS))
        # its member set lost (evicted): only the generation, read outside the script, can
        # kill the value now
        await client.delete(names.tag_members(bumped))
        await _invalidate(cache, tags=frozenset({bumped}))
        assert await client.exists(cache.value_key(PAGE, PAGE_TAGS))
        # dead on the next read (a lease, not the old page) and for a peek
        assert await cache.peek(PAGE, tags=PAGE_TAGS) is None
        lease = await _lease(cache, PAGE, PAGE_TAGS)
        await cache.release_lease(PAGE, lease.token, tags=PAGE_TAGS)


async def test_on_a_cluster_a_fill_leased_before_a_row_tags_bump_is_refused(
    cache: RedisCache,
) -> None:
    await _fill_eventually(cache, PAGE, PAGE_TAGS, b"page")  # the row generations exist
    await _invalidate(cache, keys=frozenset({PAGE}))
    lease = await _lease(cache, PAGE, PAGE_TAGS)
    # the reader loaded the old rows, then row:product:1 changed and was invalidated
    await _invalidate(cache, tags=frozenset({"row:product:1"}))
    assert await _fill(cache, PAGE, PAGE_TAGS, lease, b"old page") == -1
    assert await cache.peek(PAGE, tags=PAGE_TAGS) is None  # nothing stored
    await _fill_eventually(cache, PAGE, PAGE_TAGS, b"new page")  # the lease was given back


async def test_on_a_cluster_a_flush_kills_every_entry_and_refuses_fills_leased_before_it(
    cache: RedisCache,
) -> None:
    lease = await _lease(cache, PRODUCT, PRODUCT_TAGS)
    assert await _fill(cache, PRODUCT, PRODUCT_TAGS, lease, b"v1") == 1
    untagged = await _lease(cache, "product:77", ())
    await cache.bump_epoch("test", origin="cdc")
    assert await cache.peek(PRODUCT, tags=PRODUCT_TAGS) is None
    assert await _fill(cache, "product:77", (), untagged, b"old") == -1


async def test_on_a_cluster_the_purge_unlinks_the_values_a_flush_killed_and_keeps_live_ones(
    cache: RedisCache, client: aioredis.Redis
) -> None:
    entries = [f"product:{i}" for i in range(100, 130)]  # untagged: about 30 slots
    for entry in entries:
        lease = await _lease(cache, entry, ())
        assert await _fill(cache, entry, (), lease, b"old") == 1
    await cache.bump_epoch("test", origin="cdc")
    lease = await _lease(cache, entries[0], ())
    assert await _fill(cache, entries[0], (), lease, b"new") == 1  # live after the flush

    outcome = await jobs.purge_dead(cache, chunk=7)

    assert outcome.unlinked >= len(entries) - 1
    assert await client.exists(cache.value_key(entries[0], ()))
    assert await cache.peek(entries[0], tags=()) == b"new"
    for entry in entries[1:]:
        assert not await client.exists(cache.value_key(entry, ()))


async def test_on_a_cluster_a_node_refusing_its_part_fails_the_batch_but_instances_are_told(
    cache: RedisCache, client: aioredis.Redis, redis_cluster: RedisClusterServers
) -> None:
    """The caller retries a batch a node refused (the invalidator widens it to a flush), but
    the message goes out at once: every other node's entries leave the instances' L1 now, not
    when the missing heartbeats stop it."""
    channel = cache.keyspace.channel
    channel_owner = redis_cluster.master_of_slot(redis_cluster.keyslot(channel))

    def master_of(entry: str) -> str:
        return redis_cluster.master_of_slot(key_slot(entry)).node_id

    refused = next(
        f"product:{i}"
        for i in range(200, 400)
        if master_of(f"product:{i}") != channel_owner.node_id
    )
    applied = next(
        f"product:{i}" for i in range(200, 400) if master_of(f"product:{i}") != master_of(refused)
    )
    for entry in (refused, applied):
        await _fill_eventually(cache, entry, (), b"old")
    refusing = redis_cluster.node(redis_cluster.master_of_slot(key_slot(refused)).port).client()
    listener = redis_cluster.node(channel_owner.port).client().pubsub()  # type: ignore[no-untyped-call]
    listener.ssubscribe(channel)
    assert listener.get_sharded_message(timeout=2)["type"] == "ssubscribe"
    refusing.config_set("min-replicas-to-write", 5)  # NOREPLICAS for every write there
    try:
        with pytest.raises(RedisError, match="NOREPLICAS"):
            await _invalidate(cache, keys=frozenset({refused, applied}))
        assert not await client.exists(cache.value_key(applied, ()))  # its node's part ran
        assert await client.exists(cache.value_key(refused, ()))  # for the caller's retry
        message = listener.get_sharded_message(timeout=2)
        assert message is not None and message["type"] == "smessage"
        assert set(Invalidation.decode(message["data"]).keys) == {refused, applied}
    finally:
        refusing.config_set("min-replicas-to-write", 0)
        refusing.close()
        listener.close()


async def test_on_a_cluster_a_large_tags_members_are_freed_inline_then_by_the_worker(
    cache: RedisCache, client: aioredis.Redis
) -> None:
    """More members than the script frees inline (INLINE_MEMBER_LIMIT): the rest is renamed
    for the worker's collect_garbage, members of the tag's slot and of others alike."""
    entries = [f"product:{i}" for i in range(1000, 1300)]
    homed = {entry: (f"category:{i % 40}", "catalog") for i, entry in enumerate(entries)}
    for entry, tags in homed.items():
        await _fill_eventually(cache, entry, tags, b"old")
    targets = Targets(tags=frozenset({"catalog"}))
    result = await cache.invalidate(targets, Invalidation.of(targets, origin="cdc"))
    assert result.garbage, "fewer members than the inline limit"
    left = [e for e in entries if await client.exists(cache.value_key(e, homed[e]))]
    assert 0 < len(left) <= len(entries) - INLINE_MEMBER_LIMIT

    freed = await jobs.collect_garbage(cache, result.garbage, chunk=16)

    assert freed == len(left)
    assert not [e for e in entries if await client.exists(cache.value_key(e, homed[e]))]
    assert not await client.exists(*result.garbage)


async def test_on_a_cluster_a_retried_invalidation_applies_and_flushes_past_the_outage(
    cache: RedisCache,
) -> None:
    await _fill_eventually(cache, PRODUCT, PRODUCT_TAGS, b"old")
    enqueued_ms = int(time.time() * 1000)  # the invalidator handed it over then
    targets = Targets(frozenset({PRODUCT}))

    outcome = await jobs.retry_invalidation(cache, targets, "redis unreachable", enqueued_ms)

    assert outcome.epoch_bumped  # whatever Redis held meanwhile is treated as changed
    assert await cache.current_epoch() >= enqueued_ms * 1000
    assert await cache.peek(PRODUCT, tags=PRODUCT_TAGS) is None


async def test_on_a_cluster_sampled_reads_reach_the_hot_set_counted_in_one_command(
    redis_cluster: RedisClusterServers,
    redis_server: RedisServer,
    database_url: str,
    namespace: str,
) -> None:
    settings = CacheSettings(
        database_url=database_url,
        redis_url=redis_cluster.url,
        redis_cluster=True,
        celery_broker_url=redis_server.url,  # Celery has no cluster broker; no task is sent
        namespace=namespace,
        hot_sample_rate=1.0,
    )
    hot = Keyspace(namespace, cluster=True).hot
    hot_node = redis_cluster.node(redis_cluster.master_of_slot(redis_cluster.keyslot(hot)).port)
    calls_before = _zincrby_calls(hot_node)
    async with Cache(settings, declaration.load(), Loaders()) as runtime:
        redis = runtime.redis
        assert redis is not None
        for entry in ("product:1", "product:2", "product:1", "product:1"):
            runtime.sample_read(entry)  # in one turn of the loop: before any send

        for _ in range(500):
            if await redis.zscore(hot, "product:1") == 3:
                break
            await asyncio.sleep(0.01)
        assert await redis.zscore(hot, "product:1") == 3
        assert await redis.zscore(hot, "product:2") == 1
    # two members, one ZINCRBY each, in one pipeline: not one command (and task) per read
    assert _zincrby_calls(hot_node) - calls_before == 2


def _zincrby_calls(node: RedisServer) -> int:
    stats = node.client().info("commandstats")
    return int(stats.get("cmdstat_zincrby", {}).get("calls", 0))


@pytest.fixture
async def marked(client: aioredis.Redis, namespace: str) -> AsyncIterator[RedisCache]:
    """As `cache`, with read replicas: leases carry the LSN marker."""
    cache = RedisCache(client, Keyspace(namespace, cluster=True), home_of=home_of, lsn_marker=True)
    await cache.heartbeat(Heartbeat(500, sender="test"), valid_ms=60_000)
    yield cache
    cache.close()


async def test_on_a_cluster_a_lease_carries_the_lsn_marker_the_invalidation_raised(
    marked: RedisCache,
) -> None:
    # read replicas beside a cluster: the marker (a slot of its own) is raised before the
    # invalidation's scripts and read after the lease, so the lease of a refill sees it
    assert (await _lease(marked, PRODUCT, PRODUCT_TAGS)).marker is None  # none raised yet
    await _invalidate_at(marked, PRODUCT, lsn=0x16_B374D848)
    assert (await _lease(marked, PRODUCT, PRODUCT_TAGS)).marker == 0x16_B374D848
    await _invalidate_at(marked, PRODUCT, lsn=0x10_00000000)  # never lowered
    assert (await _lease(marked, PRODUCT, PRODUCT_TAGS)).marker == 0x16_B374D848
    # no LSN known (a worker's retry): the marker is dropped, leased loads use the primary
    await _invalidate_at(marked, PRODUCT, lsn=UNKNOWN_LSN)
    assert (await _lease(marked, PRODUCT, PRODUCT_TAGS)).marker is None


async def test_on_a_cluster_an_invalidation_whose_marker_cannot_be_raised_applies_nothing(
    marked: RedisCache, client: aioredis.Redis
) -> None:
    await _fill_eventually(marked, PRODUCT, PRODUCT_TAGS, b"old")
    # the marker's node refuses its script (the key holds another type): the batch fails for
    # the caller's retry before any slot's part ran, so no value is gone while the marker is
    # behind its change (a refill would trust a replica that lacks it)
    await client.rpush(marked.keyspace.lsn_marker, "not a marker")
    with pytest.raises(RedisError):
        await _invalidate_at(marked, PRODUCT, lsn=0x20_00000000)
    assert await marked.peek(PRODUCT, tags=PRODUCT_TAGS) == b"old"


async def _invalidate_at(cache: RedisCache, entry: str, lsn: int) -> None:
    targets = Targets(frozenset({entry}))
    await cache.invalidate(targets, Invalidation.of(targets, origin="cdc"), lsn=lsn)
