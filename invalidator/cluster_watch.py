"""On a Redis Cluster: a change of which master serves a slot is a restart of that slot.

Replication inside a cluster is asynchronous, so a failover (a master killed and its replica
promoted, or CLUSTER FAILOVER) can lose the master's last acknowledged writes: an
invalidation's DEL or generation bump may be missing on the promoted replica, which may still
hold the value it deleted (DESIGN invariant 9; README, Redis Cluster). One Redis detects its
restart by a new run id (ENSURE_SERVER); a cluster client has no per-connection hook, so the
active invalidator polls the topology instead: which node serves each slot range, and the
run id of each of those masters (a master restarted in place keeps its address but not its
run id). Any difference from what it saw last is a flush (every slot's epoch bumped), queued
in order with the changes already received. So is the first look of a term: whatever
happened before it was not watched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from invalidator.listener import FlushRequest

log = logging.getLogger(__name__)
Topology = tuple[tuple[tuple[int, int, str], ...], tuple[tuple[str, str], ...]]


async def topology(client: aioredis.Redis) -> Topology:
    """(slot range, master address) for every range, and (master address, run id)."""
    cluster: Any = client
    slots = await cluster.execute_command("CLUSTER SLOTS")
    ranges = tuple(
        sorted(
            (start, end, f"{info['primary'][0]}:{info['primary'][1]}")
            for (start, end), info in slots.items()
        )
    )
    masters = sorted({name for _, _, name in ranges})
    nodes = [cluster.get_node(node_name=name) for name in masters]
    if any(node is None for node in nodes):  # a master the client does not know yet
        await cluster.nodes_manager.initialize()
        nodes = [cluster.get_node(node_name=name) for name in masters]
    infos = await asyncio.gather(
        *(cluster.execute_command("INFO", "server", target_nodes=node) for node in nodes)
    )
    run_ids = tuple((name, str(info["run_id"])) for name, info in zip(masters, infos, strict=True))
    return ranges, run_ids


class TopologyWatch:
    """Polls the topology every interval_s; flush(request) on every change."""

    def __init__(
        self,
        client: aioredis.Redis,
        flush: Callable[[FlushRequest], None],
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self.client = client
        self.flush = flush
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.known: Topology | None = None
        self.changes = 0

    async def look(self) -> bool:
        """One look; True when it queued a flush. A look that fails (a node down, the views of
        the nodes disagreeing mid-failover) decides nothing: the next one will."""
        try:
            async with asyncio.timeout(self.timeout_s):
                seen = await topology(self.client)
        except (
            RedisError,
            RedisClusterException,
            OSError,
            TimeoutError,
            KeyError,
            TypeError,
        ) as exc:
            log.debug("could not read the cluster topology: %s", exc)
            return False
        if seen == self.known:
            return False
        first = self.known is None
        self.known = seen
        self.changes += 1
        reason = (
            "redis cluster topology not watched before this term"
            if first
            else "redis cluster topology changed (a failover may have lost acknowledged writes)"
        )
        if not first:
            log.warning("%s: %s", reason, _describe(seen))
        self.flush(FlushRequest("redis_topology", reason))
        return True

    async def run(self) -> None:
        while True:
            await self.look()
            await asyncio.sleep(self.interval_s)


def _describe(seen: Topology) -> str:
    return ", ".join(f"{start}-{end}@{name}" for start, end, name in seen[0])
