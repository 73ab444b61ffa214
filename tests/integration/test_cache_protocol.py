"""The Lua cache protocol against a real Redis: leases, guarded fills, tags, epochs.

Each race is forced by running the protocol's steps in the racy order by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest
import redis.asyncio as aioredis

from api.keys import category_page_entry, category_summary_entry, product_entry
from pgbust.keys import Keyspace
from pgbust.protocol import (
    NOT_LIVE,
    Busy,
    Heartbeat,
    Hit,
    Invalidation,
    Lease,
    Targets,
    decode_message,
)
from pgbust.redis_cache import RedisCache
from tests.support.demo import demo_tags
from tests.support.servers import RedisServer


@pytest.fixture(params=[False, True], ids=["redis-py", "pipelined"])
async def cache(
    redis_server: RedisServer, keyspace: Keyspace, request: pytest.FixtureRequest
) -> AsyncIterator[RedisCache]:
    """The protocol with capture live (the liveness key set for good): these tests are the
    invalidator; the gate itself is tested below. Every test runs with the read path's
    scripts sent by redis-py and over the pipelined lane (pgbust.redis_lane)."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.set(keyspace.capture_alive, "test")
    cache = RedisCache(client, keyspace, pipelined=request.param)
    yield cache
    cache.close()
    await client.aclose()


def _invalidate(keys: Iterable[str] = (), tags: Iterable[str] = ()) -> tuple[Targets, Invalidation]:
    targets = Targets(frozenset(keys), frozenset(tags))
    return targets, Invalidation.of(targets, origin="test")


async def test_miss_grants_one_lease_then_fill_makes_a_hit(cache: RedisCache) -> None:
    entry = product_entry(1)
    first = await cache.get_or_lease(entry, tags=demo_tags(entry))
    second = await cache.get_or_lease(entry, tags=demo_tags(entry))
    assert isinstance(first, Lease)
    assert isinstance(second, Busy)
    assert (
        await cache.fill(
            entry,
            first.token,
            first.stamp,
            b'{"id":1}',
            rows=(),
            since=first.since,
            tags=demo_tags(entry),
        )
        == 1
    )
    assert await cache.get_or_lease(entry, tags=demo_tags(entry)) == Hit(b'{"id":1}')


async def test_invalidation_between_db_read_and_fill_refuses_the_fill(cache: RedisCache) -> None:
    entry = product_entry(2)
    lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
    assert isinstance(lease, Lease)
    # the reader has loaded the old row; now the writer commits and the invalidation runs
    await cache.invalidate(*_invalidate(keys={entry}))
    assert (
        await cache.fill(
            entry,
            lease.token,
            lease.stamp,
            b'{"old":true}',
            rows=(),
            since=lease.since,
            tags=demo_tags(entry),
        )
        == 0
    )
    assert await cache.peek(entry, tags=demo_tags(entry)) is None


async def test_stale_fill_of_a_tagged_entry_is_refused_after_tag_invalidation(
    cache: RedisCache,
) -> None:
    entry = category_page_entry(3, 20, 0)
    lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
    assert isinstance(lease, Lease)
    await cache.invalidate(*_invalidate(tags={"category:3:pages"}))
    assert (
        await cache.fill(
            entry,
            lease.token,
            lease.stamp,
            b"[old]",
            rows=(),
            since=lease.since,
            tags=demo_tags(entry),
        )
        == -1
    )
    assert await cache.peek(entry, tags=demo_tags(entry)) is None


async def test_tag_invalidation_kills_every_entry_of_the_tag_only(cache: RedisCache) -> None:
    entries = [category_page_entry(4, 20, 0), category_page_entry(4, 20, 20)]
    entries.append(category_summary_entry(4))
    for entry in entries:
        lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
        assert isinstance(lease, Lease)
        assert (
            await cache.fill(
                entry,
                lease.token,
                lease.stamp,
                entry.encode(),
                rows=(),
                since=lease.since,
                tags=demo_tags(entry),
            )
            == 1
        )
    await cache.invalidate(*_invalidate(tags={"category:4:pages"}))
    assert await cache.peek(entries[0], tags=demo_tags(entries[0])) is None
    assert await cache.peek(entries[1], tags=demo_tags(entries[1])) is None
    assert await cache.peek(entries[2], tags=demo_tags(entries[2])) == entries[2].encode()
    # freed inline: the dead values are gone from Redis, not just unreachable
    assert await cache.client.exists(cache.keyspace.value(entries[0])) == 0


async def test_epoch_bump_kills_every_entry_and_in_flight_fills(cache: RedisCache) -> None:
    filled, in_flight = product_entry(6), product_entry(7)
    lease = await cache.get_or_lease(filled, tags=demo_tags(filled))
    assert isinstance(lease, Lease)
    await cache.fill(
        filled, lease.token, lease.stamp, b"x", rows=(), since=lease.since, tags=demo_tags(filled)
    )
    pending = await cache.get_or_lease(in_flight, tags=demo_tags(in_flight))
    assert isinstance(pending, Lease)
    before = await cache.current_epoch()
    after = await cache.bump_epoch("test", origin="test")
    assert after > before
    assert await cache.peek(filled, tags=demo_tags(filled)) is None
    assert (
        await cache.fill(
            in_flight,
            pending.token,
            pending.stamp,
            b"old",
            rows=(),
            since=pending.since,
            tags=demo_tags(in_flight),
        )
        == -1
    )


async def test_epoch_is_monotonic_even_if_redis_loses_it(cache: RedisCache) -> None:
    first = await cache.bump_epoch("a", origin="test")
    await cache.client.set(cache.keyspace.epoch, 3)  # as if restored from an old snapshot
    second = await cache.bump_epoch("b", origin="test")
    assert second >= first


async def test_invalidation_publishes_one_message(cache: RedisCache) -> None:
    pubsub = cache.client.pubsub()
    await pubsub.subscribe(cache.keyspace.channel)
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    targets, message = _invalidate(keys={"product:9"}, tags={"category:1:pages"})
    result = await cache.invalidate(targets, message)
    received = await pubsub.get_message(timeout=2)
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert result.receivers == 1
    assert received is not None
    assert Invalidation.decode(received["data"]) == message


async def test_server_restart_is_detected_once(cache: RedisCache) -> None:
    await cache.ensure_server_identity("test")  # first sight of this server may bump
    assert await cache.ensure_server_identity("test") is None
    await cache.client.set(cache.keyspace.server_identity, "some-older-run-id")
    assert await cache.ensure_server_identity("test") is not None


# --- the capture gate (DESIGN invariant 8) ---


async def test_without_live_capture_redis_serves_nothing_and_grants_no_lease(
    cache: RedisCache,
) -> None:
    entry = product_entry(21)
    lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
    assert isinstance(lease, Lease)
    assert (
        await cache.fill(
            entry,
            lease.token,
            lease.stamp,
            b'{"id":21}',
            rows=(),
            since=lease.since,
            tags=demo_tags(entry),
        )
        == 1
    )
    ks = cache.keyspace
    await cache.client.delete(ks.capture_alive)  # no active invalidator proves its channels
    assert await cache.get_or_lease(entry, tags=demo_tags(entry)) == NOT_LIVE
    assert await cache.client.exists(ks.lease(entry)) == 0  # nothing was leased either
    assert (
        await cache.peek(entry, tags=demo_tags(entry)) == b'{"id":21}'
    )  # still there, just not served
    await cache.heartbeat(Heartbeat(every_ms=500, sender="test"), valid_ms=10_000)
    assert await cache.get_or_lease(entry, tags=demo_tags(entry)) == Hit(b'{"id":21}')


async def test_heartbeat_keeps_the_liveness_key_for_its_validity_and_announces_itself(
    cache: RedisCache,
) -> None:
    ks = cache.keyspace
    pubsub = cache.client.pubsub()
    await pubsub.subscribe(ks.channel)
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    beat = Heartbeat(every_ms=500, sender="host:1/2", proof_age_ms=3)
    assert await cache.heartbeat(beat, valid_ms=200) == 1
    received = await pubsub.get_message(timeout=2)
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert received is not None and decode_message(received["data"]) == beat
    assert 0 < await cache.client.pttl(ks.capture_alive) <= 200
    # the key lives exactly as long as the proof: past it, Redis serves nothing
    await asyncio.sleep(0.25)
    assert (
        await cache.get_or_lease(product_entry(22), tags=demo_tags(product_entry(22))) == NOT_LIVE
    )


# --- row tags: a page is filed under the tags of the products it holds -----------------------

ROWS = ("row:products:1", "row:products:2")


async def _fill_page(cache: RedisCache, entry: str, payload: bytes, rows: tuple[str, ...]) -> int:
    lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
    assert isinstance(lease, Lease)
    return await cache.fill(
        entry,
        lease.token,
        lease.stamp,
        payload,
        rows=rows,
        since=lease.since,
        tags=demo_tags(entry),
    )


async def _cached_page(cache: RedisCache, entry: str, payload: bytes) -> None:
    """A page holding products 1 and 2, stored (its first fill creates the row generations
    and is refused: -2; the next one stores)."""
    assert await _fill_page(cache, entry, payload, ROWS) == -2
    assert await _fill_page(cache, entry, payload, ROWS) == 1
    hit = await cache.get_or_lease(entry, tags=demo_tags(entry))
    assert hit == Hit(payload, ROWS)


async def test_a_row_tag_kills_the_pages_that_hold_the_row_and_no_other(cache: RedisCache) -> None:
    holding, other = category_page_entry(3, 20, 0), category_page_entry(3, 20, 20)
    await _cached_page(cache, holding, b"[1,2]")
    assert await _fill_page(cache, other, b"[3,4]", ("row:products:3",)) == -2
    assert await _fill_page(cache, other, b"[3,4]", ("row:products:3",)) == 1
    await cache.invalidate(*_invalidate(keys={"product:2"}, tags={"row:products:2"}))
    assert await cache.peek(holding, tags=demo_tags(holding)) is None
    assert await cache.peek(other, tags=demo_tags(other)) == b"[3,4]"
    assert isinstance(await cache.get_or_lease(holding, tags=demo_tags(holding)), Lease)
    # freed inline with the row tag's member set
    assert await cache.client.exists(cache.keyspace.value(holding)) == 0


async def test_fill_of_a_page_is_refused_when_a_row_it_holds_changed_after_the_lease(
    cache: RedisCache,
) -> None:
    entry = category_page_entry(3, 20, 0)
    await _cached_page(cache, entry, b"[1,2]")
    await cache.invalidate(*_invalidate(tags={"row:products:9"}))  # unrelated: nothing dies
    assert await cache.peek(entry, tags=demo_tags(entry)) == b"[1,2]"
    await cache.client.delete(cache.keyspace.value(entry))
    lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
    assert isinstance(lease, Lease)
    # the reader loaded the page (old product 2); the UPDATE commits, its invalidation runs
    await cache.invalidate(*_invalidate(keys={"product:2"}, tags={"row:products:2"}))
    stored = await cache.fill(
        entry, lease.token, lease.stamp, b"old", rows=ROWS, since=lease.since, tags=demo_tags(entry)
    )
    assert stored == -1
    assert await cache.peek(entry, tags=demo_tags(entry)) is None


async def test_an_evicted_row_generation_makes_the_page_dead_never_live_again(
    cache: RedisCache,
) -> None:
    entry = category_page_entry(3, 20, 0)
    await _cached_page(cache, entry, b"[1,2]")
    await cache.client.delete(cache.keyspace.tag_generation("row:products:1"))  # evicted
    assert await cache.peek(entry, tags=demo_tags(entry)) is None
    assert isinstance(await cache.get_or_lease(entry, tags=demo_tags(entry)), Busy | Lease)
    # a bump after the lease, then the generation evicted before the fill: refused, and the
    # generation comes back younger than the lease
    await cache.client.delete(cache.keyspace.lease(entry))
    lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
    assert isinstance(lease, Lease)
    await cache.invalidate(*_invalidate(tags={"row:products:2"}))
    await cache.client.delete(cache.keyspace.tag_generation("row:products:2"))
    stored = await cache.fill(
        entry, lease.token, lease.stamp, b"old", rows=ROWS, since=lease.since, tags=demo_tags(entry)
    )
    assert stored == -2
    assert await cache.peek(entry, tags=demo_tags(entry)) is None
    generation = await cache.client.get(cache.keyspace.tag_generation("row:products:2"))
    assert generation is not None and int(generation) > lease.since


async def test_workers_reclaim_dead_pages_but_keep_live_ones_with_rows(
    cache: RedisCache,
) -> None:
    from worker import lua as worker_lua

    entry = category_page_entry(3, 20, 0)
    await _cached_page(cache, entry, b"[1,2]")
    ks = cache.keyspace
    unlink_dead = cache.client.register_script(worker_lua.UNLINK_DEAD)
    keys = [ks.epoch, ks.tag_generation("category:3:pages"), ks.value(entry)]
    assert await unlink_dead(keys=keys, args=["1"]) == 0
    assert await unlink_dead(keys=[ks.epoch, ks.value(entry)], args=["0"]) == 0
    await cache.invalidate(*_invalidate(tags={"category:3:pages"}))
    await cache.client.set(ks.value(entry), b"kept alive by nothing")  # a dead stamp
    assert await unlink_dead(keys=keys, args=["1"]) == 1
