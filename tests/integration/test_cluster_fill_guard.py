"""The fill guard on a real Redis Cluster, with the cluster key design (keys.ClusterNames):
an entry's value and lease, its home tag's generation and members, and its slot's epoch
share one slot, so the one-Redis lease, fill and read scripts run there unchanged (without
the capture gate and row tags, which live in other slots: RedisCache checks those outside
the scripts, tests/integration/test_cluster_cache.py)."""

from __future__ import annotations

import uuid

from pgbust import lua
from pgbust.cluster_invalidation import ClusterInvalidation
from pgbust.keys import ClusterNames, Keyspace
from pgbust.protocol import Hit, Invalidation, Lease, Targets, parse_get_or_lease
from pgbust.redis_connect import cluster_client
from tests.support.redis_cluster import RedisClusterServers

HOME = "category:3"  # the first tag of every entry below


class Entry:
    def __init__(self, client: object, names: ClusterNames, entry: str) -> None:
        self.client = client
        value = names.value(entry, HOME)
        self.keys = [names.epoch_of(value), value, names.lease(entry, HOME)]
        self.keys.append(names.tag_generation(HOME))
        self.members = names.tag_members(HOME)

    async def read(self) -> object:
        token = uuid.uuid4().hex
        reply = await self.client.eval(lua.GET_OR_LEASE, 4, *self.keys, token, 2000)  # type: ignore[attr-defined]
        return parse_get_or_lease(reply, token)

    async def fill(self, lease: Lease, payload: bytes) -> int:
        keys = [*self.keys, self.members]
        args = [lease.token, lease.stamp, payload, 0, "1", lease.since]
        return int(await self.client.eval(lua.FILL, len(keys), *keys, *args))  # type: ignore[attr-defined]


async def test_lease_fill_and_hit_run_in_one_slot_and_every_invalidation_refuses_or_kills(
    redis_cluster: RedisClusterServers, namespace: str
) -> None:
    client = cluster_client(redis_cluster.url)
    names = ClusterNames(namespace)
    invalidation = ClusterInvalidation(
        client, Keyspace(namespace, cluster=True), lambda entry: HOME
    )
    one, two = Entry(client, names, "product:1"), Entry(client, names, "product:2")
    try:
        lease = await one.read()
        assert isinstance(lease, Lease)
        assert await one.fill(lease, b"v1") == 1
        assert await one.read() == Hit(b"v1")

        # a reader loaded product:2, then its invalidation came: the fill is refused
        lease = await two.read()
        assert isinstance(lease, Lease)
        targets = Targets(frozenset({"product:2"}))
        await invalidation.invalidate(targets, Invalidation.of(targets, origin="cdc"))
        assert await two.fill(lease, b"old") == 0

        # the home tag bumped: product:1's stamp is dead
        targets = Targets(tags=frozenset({HOME}))
        await invalidation.invalidate(targets, Invalidation.of(targets, origin="cdc"))
        lease = await one.read()
        assert isinstance(lease, Lease)
        assert await one.fill(lease, b"v2") == 1
        assert await one.read() == Hit(b"v2")

        # a flush of every slot's epoch: dead again, and a fill leased before it is refused
        stale = await two.read()
        assert isinstance(stale, Lease)
        await invalidation.flush("test", "cdc")
        assert isinstance(await one.read(), Lease)
        assert await two.fill(stale, b"old") == -1
    finally:
        await client.aclose()
