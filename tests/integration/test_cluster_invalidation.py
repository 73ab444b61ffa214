"""Invalidation on a real Redis Cluster: one script per slot, members of other slots
unlinked outside, one SPUBLISH; a flush bumps the epoch of every slot."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from redis.exceptions import RedisError

from pgbust.cluster_invalidation import ClusterInvalidation
from pgbust.keys import ClusterNames, Keyspace
from pgbust.protocol import Invalidation, Targets
from pgbust.redis_connect import cluster_client
from pgbust.slots import SLOTS, key_slot
from tests.support.redis_cluster import RedisClusterServers

HOMES = {"product:1": "category:3", "product:9": "category:4", "page:1": "category:7"}


def home_of(entry: str) -> str:
    return HOMES.get(entry, entry)


def _listener(cluster: RedisClusterServers, keyspace: Keyspace) -> redis.client.PubSub:
    channel = keyspace.channel
    owner = cluster.master_of_slot(cluster.keyslot(channel))
    node = cluster.node(owner.port).client()
    pubsub: redis.client.PubSub = node.pubsub()  # type: ignore[no-untyped-call]
    pubsub.ssubscribe(channel)
    return pubsub


def _messages(pubsub: redis.client.PubSub, wait_s: float = 1.0) -> list[bytes]:
    got = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        message = pubsub.get_sharded_message(timeout=0.05)
        if message and message["type"] == "smessage":
            got.append(message["data"])
    return got


async def test_an_invalidation_across_slots_runs_per_slot_and_publishes_once(
    redis_cluster: RedisClusterServers, namespace: str
) -> None:
    keyspace = Keyspace(namespace, cluster=True)
    names = ClusterNames(namespace)
    sync = redis_cluster.client()
    listener = _listener(redis_cluster, keyspace)
    client = cluster_client(redis_cluster.url)
    try:
        values = {e: names.value(e, home_of(e)) for e in ("product:1", "product:2", "product:9")}
        page = names.value("page:1", home_of("page:1"))  # filed under category:3 as 2nd tag
        for entry, key in values.items():
            sync.set(key, b"1|old")
            sync.set(names.lease(entry, home_of(entry)), b"token")
        sync.set(page, b"1|old page")
        sync.set(names.tag_generation("category:3"), 100)
        sync.sadd(names.tag_members("category:3"), values["product:1"], page)
        assert key_slot(page) != key_slot(names.tag_members("category:3"))
        listener.get_sharded_message(timeout=0.5)  # the ssubscribe confirmation

        targets = Targets(frozenset({"product:1", "product:2"}), frozenset({"category:3"}))
        result = await ClusterInvalidation(client, keyspace, home_of).invalidate(
            targets, Invalidation.of(targets, origin="cdc", ts_us=1)
        )

        # product:1 and category:3 share a slot; product:2 has its own: two slots' work
        assert result.slots == 2
        for entry in ("product:1", "product:2"):
            assert not sync.exists(values[entry], names.lease(entry, home_of(entry)))
        assert not sync.exists(page)  # a member in another slot, unlinked outside the script
        assert int(sync.get(names.tag_generation("category:3")) or 0) > 100
        assert sync.get(values["product:9"]) == b"1|old"  # untouched
        assert len(_messages(listener)) == 1
    finally:
        listener.close()
        sync.close()
        await client.aclose()


async def test_a_flush_bumps_the_epoch_of_every_slot_and_publishes_once(
    redis_cluster: RedisClusterServers, namespace: str
) -> None:
    keyspace = Keyspace(namespace, cluster=True)
    names = ClusterNames(namespace)
    sync = redis_cluster.client()
    listener = _listener(redis_cluster, keyspace)
    client = cluster_client(redis_cluster.url)
    try:
        listener.get_sharded_message(timeout=0.5)
        invalidation = ClusterInvalidation(client, keyspace, home_of)
        await invalidation.flush("test", "cdc")
        before = [int(sync.get(names.epoch(s)) or 0) for s in range(0, SLOTS, 61)]
        started = time.perf_counter()
        await invalidation.flush("test", "cdc")
        elapsed = time.perf_counter() - started
        after = [int(sync.get(names.epoch(s)) or 0) for s in range(0, SLOTS, 61)]
        assert all(a > b > 0 for a, b in zip(after, before, strict=True))
        assert len(_messages(listener)) == 2
        print(f"flush of {SLOTS} slot epochs: {elapsed * 1000:.0f} ms")
    finally:
        listener.close()
        sync.close()
        await client.aclose()


async def test_a_batch_over_many_slots_is_one_call_per_node_and_survives_a_moved_slot(
    tmp_path: Path, namespace: str
) -> None:
    cluster = RedisClusterServers(tmp_path / "cluster")
    cluster.start()
    keyspace = Keyspace(namespace, cluster=True)
    names = ClusterNames(namespace)
    sync = cluster.client()
    client = cluster_client(cluster.url)
    try:
        entries = [f"product:{i}" for i in range(60)]  # untagged: 60 homes, ~60 slots
        values = [names.value(e, e) for e in entries]
        for value in values:
            sync.set(value, b"1|old")
        invalidation = ClusterInvalidation(client, keyspace, lambda entry: entry)
        targets = Targets(frozenset(entries[:30]))
        await invalidation.invalidate(targets, Invalidation.of(targets, origin="cdc"))
        assert not any(sync.exists(v) for v in values[:30])
        assert all(sync.exists(v) for v in values[30:])
        assert invalidation.node_refusals == 0

        # a slot of the next batch moves; the client's topology still names its old owner
        moved = key_slot(values[40])
        target = next(
            m for m in cluster.masters() if m.node_id != cluster.master_of_slot(moved).node_id
        )
        cluster.move_slot(moved, target)
        targets = Targets(frozenset(entries[30:]))
        await invalidation.invalidate(targets, Invalidation.of(targets, origin="cdc"))
        assert invalidation.node_refusals == 1  # the old owner refused; slot by slot then
        left = [v for v in values if sync.exists(v)]
        assert not left, (left, [key_slot(v) for v in left], moved)
    finally:
        sync.close()
        await client.aclose()
        cluster.stop()


async def test_a_flush_during_a_masters_death_fails_loudly_and_completes_after_the_promotion(
    tmp_path: Path, namespace: str
) -> None:
    """A flush that could not bump every slot is not done: it raises (the invalidator keeps
    it pending and retries), and the retry after the failover bumps all 16384."""
    cluster = RedisClusterServers(tmp_path / "cluster")
    cluster.start()
    keyspace = Keyspace(namespace, cluster=True)
    client = cluster_client(cluster.url, socket_timeout=1.0, socket_connect_timeout=0.5)
    invalidation = ClusterInvalidation(client, keyspace, lambda entry: entry)
    try:
        await invalidation.flush("before", "cdc")
        victim = cluster.masters()[0]
        replica = cluster.replica_of(victim)
        cluster.kill(victim.port)
        with pytest.raises((RedisError, OSError, RuntimeError)):
            await invalidation.flush("during", "cdc")
        assert cluster.wait_promoted(replica)
        slot = victim.slots[0][0]  # a slot the dead master served, now the promoted replica's
        sync = cluster.client()
        try:
            epoch_key = ClusterNames(namespace).epoch(slot)
            before = int(sync.get(epoch_key) or 0)
            await invalidation.flush("after", "cdc")  # raises unless all 16384 were bumped
            # (before may be 0: replication is asynchronous, and the killed master's last
            # writes, the first flush among them, may never have reached its replica)
            assert int(sync.get(epoch_key) or 0) > before
        finally:
            sync.close()
    finally:
        await client.aclose()
        cluster.stop()
