"""The test Redis Cluster itself: what the cluster tests build on."""

from __future__ import annotations

import pytest
import redis

from pgbust.slots import SLOTS, key_slot, slot_tag
from tests.support.redis_cluster import RedisClusterServers


def test_cluster_has_three_masters_with_one_replica_each_covering_every_slot(
    redis_cluster: RedisClusterServers,
) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    assert sum(b - a + 1 for m in masters for a, b in m.slots) == 16384
    for master in masters:
        assert redis_cluster.replica_of(master).role == "slave"


def test_keys_of_different_slots_live_on_different_masters_and_scripts_stay_in_one_slot(
    redis_cluster: RedisClusterServers,
) -> None:
    client = redis_cluster.client()
    try:
        owners = {redis_cluster.master_of_slot(redis_cluster.keyslot(k)).port for k in "abc"}
        assert len(owners) > 1
        for key in "abc":
            client.set(key, key)
        assert [client.get(k) for k in "abc"] == [b"a", b"b", b"c"]
        # one hash tag, one slot: a script may touch both keys
        assert client.eval("return redis.call('MSET', KEYS[1], 1, KEYS[2], 2)", 2, "{x}1", "{x}2")
        # the server itself refuses a script whose keys span slots
        node = redis_cluster.node(redis_cluster.masters()[0].port).client()
        try:
            with pytest.raises(redis.ResponseError, match=r"CROSSSLOT|same slot"):
                node.eval("return 1", 2, "{a}", "{b}")
        finally:
            node.close()
    finally:
        client.close()


def test_pgbust_computes_the_slots_the_cluster_computes(
    redis_cluster: RedisClusterServers,
) -> None:
    samples = [f"{{{slot_tag(s)}}}ns:epoch" for s in range(0, SLOTS, 97)]
    samples += ["ns:v:product:1", "{category:3}ns:g:category:3", "x{y}}z", "{}a", "é{ü}"]
    assert [key_slot(k) for k in samples] == [redis_cluster.keyslot(k) for k in samples]
