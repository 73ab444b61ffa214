"""Invalidation messages on a Redis Cluster: sharded pub/sub (SPUBLISH / SSUBSCRIBE).

The channel lives on one shard. Every API instance subscribes on that shard's master, and a
gap on that subscription — the master killed (its replica promoted), CLUSTER FAILOVER, the
channel's slot moved to another master — is a gap like any other: L1 flushed and bypassed
until subscribed again, on the shard's new owner. Each test runs a cluster of its own (the
faults change its topology).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from pgbust.cluster_invalidation import ClusterInvalidation
from pgbust.keys import ClusterNames, Keyspace
from pgbust.l1 import L1Cache
from pgbust.metrics import Metrics
from pgbust.protocol import Heartbeat, Invalidation, Targets
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import cluster_client
from pgbust.subscriber import Subscriber, pubsub_client
from tests.support.redis_cluster import RedisClusterServers

SILENCE_S = 1.0
BEAT_S = 0.1


async def until(predicate: Callable[[], bool], within: float = 20.0) -> bool:
    """Poll a condition from inside the event loop (the subscriber runs in it)."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


@dataclass
class Instance:
    """One API instance's subscriber and L1, and the test standing in for the invalidator."""

    cluster: RedisClusterServers
    cache: RedisCache
    l1: L1Cache
    subscriber: Subscriber

    @property
    def channel_slot(self) -> int:
        return self.cluster.keyslot(self.cache.keyspace.channel)

    def hold(self, entry: str) -> None:
        assert self.l1.put(self.l1.ticket(entry, ()), b"cached")

    async def invalidate(self, *entries: str) -> int:
        message = Invalidation.of(Targets(frozenset(entries)), origin="cdc", ts_us=1)
        return await self.cache.publish(message.encode())

    def serving(self) -> bool:
        return self.subscriber.caching.is_set() and self.l1.enabled

    async def serving_after(self, reconnects: int) -> bool:
        return await until(lambda: self.subscriber.reconnects > reconnects and self.serving())


async def _beat(cache: RedisCache) -> None:
    beat = Heartbeat(round(BEAT_S * 1000), sender="test")
    while True:
        with contextlib.suppress(RedisError, OSError):  # a fault is under way: beat on
            await cache.heartbeat(beat, valid_ms=round(BEAT_S * 10_000))
        await asyncio.sleep(BEAT_S)


@contextlib.asynccontextmanager
async def instance(cluster: RedisClusterServers, namespace: str) -> AsyncIterator[Instance]:
    keyspace = Keyspace(namespace, cluster=True)
    client = cluster_client(cluster.url, socket_timeout=2.0, socket_connect_timeout=1.0)
    cache = RedisCache(client, keyspace)
    l1 = L1Cache(max_entries=100, max_bytes=10**6)
    pubsub = pubsub_client(cluster.url, cluster=True)
    subscriber = Subscriber(pubsub, cache, l1, Metrics(l1), silence_s=SILENCE_S)
    tasks = [asyncio.create_task(subscriber.run()), asyncio.create_task(_beat(cache))]
    try:
        it = Instance(cluster, cache, l1, subscriber)
        assert await until(it.serving), subscriber.describe()
        yield it
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
        await pubsub.aclose()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(tmp_path / "cluster")
    cluster.start()
    yield cluster
    cluster.stop()


async def test_an_spublished_invalidation_evicts_the_entry_from_every_instances_l1(
    redis_cluster: RedisClusterServers, namespace: str
) -> None:
    async with instance(redis_cluster, namespace) as a, instance(redis_cluster, namespace) as b:
        for it in (a, b):
            it.hold("product:1")
            it.hold("product:2")
        assert a.subscriber.shard == b.subscriber.shard  # the channel's shard
        assert await a.invalidate("product:1") == 2  # both subscribers on that shard heard it
        assert await until(lambda: a.l1.get("product:1") is None)
        assert await until(lambda: b.l1.get("product:1") is None)
        assert a.l1.get("product:2") == b.l1.get("product:2") == b"cached"


async def test_a_killed_shard_master_is_a_gap_until_resubscribed_on_the_promoted_replica(
    own_cluster: RedisClusterServers, namespace: str
) -> None:
    async with instance(own_cluster, namespace) as it:
        master = own_cluster.master_of_slot(it.channel_slot)
        replica = own_cluster.replica_of(master)
        assert it.subscriber.shard.endswith(f":{master.port}")
        it.hold("product:1")
        reconnects = it.subscriber.reconnects

        own_cluster.kill(master.port)
        assert await until(lambda: not it.l1.enabled, within=5)  # bypassed at once
        assert it.l1.get("product:1") is None  # flushed: whatever came meanwhile is lost
        assert own_cluster.wait_promoted(replica)
        assert await it.serving_after(reconnects), it.subscriber.describe()
        assert it.subscriber.shard.endswith(f":{replica.port}")
        assert it.l1.get("product:1") is None  # still gone once L1 serves again

        it.hold("product:2")
        assert await it.invalidate("product:2") == 1
        assert await until(lambda: it.l1.get("product:2") is None)


async def test_cluster_failover_of_the_shard_is_a_gap_until_resubscribed_on_the_new_master(
    own_cluster: RedisClusterServers, namespace: str
) -> None:
    async with instance(own_cluster, namespace) as it:
        replica = own_cluster.replica_of(own_cluster.master_of_slot(it.channel_slot))
        it.hold("product:1")
        reconnects = it.subscriber.reconnects

        own_cluster.failover(replica)
        assert await it.serving_after(reconnects), it.subscriber.describe()
        assert it.l1.get("product:1") is None  # the gap flushed it
        assert it.subscriber.shard.endswith(f":{replica.port}")
        it.hold("product:2")
        assert await it.invalidate("product:2") == 1
        assert await until(lambda: it.l1.get("product:2") is None)


async def test_moving_the_channels_slot_is_a_gap_until_resubscribed_on_the_new_owner(
    own_cluster: RedisClusterServers, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with instance(own_cluster, namespace) as it:
        source = own_cluster.master_of_slot(it.channel_slot)
        target = next(m for m in own_cluster.masters() if m.node_id != source.node_id)
        it.hold("product:1")
        reconnects = it.subscriber.reconnects

        own_cluster.move_slot(it.channel_slot, target)
        assert await it.serving_after(reconnects), it.subscriber.describe()
        # the old owner ended the subscription itself: that is what told the subscriber
        assert "the server ended the subscription (sunsubscribe)" in caplog.text
        assert it.l1.get("product:1") is None
        assert it.subscriber.shard.endswith(f":{target.port}")
        it.hold("product:2")
        assert await it.invalidate("product:2") == 1
        assert await until(lambda: it.l1.get("product:2") is None)


async def test_a_flush_of_every_slot_flushes_l1_and_an_unannounced_epoch_bump_does_too(
    redis_cluster: RedisClusterServers, namespace: str
) -> None:
    async with instance(redis_cluster, namespace) as it:
        flusher = ClusterInvalidation(it.cache.client, it.cache.keyspace, lambda entry: entry)
        it.hold("product:1")
        assert await flusher.flush("test", "cdc") == 1  # the flush message, heard
        assert await until(lambda: it.l1.get("product:1") is None)

        # a bump nobody announced: the subscriber's epoch check (every second) catches it
        it.hold("product:2")
        names = ClusterNames(namespace)
        sync = redis_cluster.client()
        try:
            sync.incr(names.epoch_of(it.cache.keyspace.channel))
        finally:
            sync.close()
        assert await until(lambda: it.l1.get("product:2") is None, within=5)
