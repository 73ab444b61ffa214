"""Invalidation on a Redis Cluster: one script per node (or per slot), then one SPUBLISH.

The cluster key design (pgbust/slots.py, keys.ClusterNames): an entry's value and lease live
in the slot of its *home* (its first tag, or itself), a tag's generation and members in the
tag's own slot, and every slot has its own epoch. An invalidation is therefore split per
slot, and the slots of one master go in one call (INVALIDATE_NODE, allow-cross-slot-keys;
INVALIDATE_SLOT per slot when the node refuses it): each slot's part deletes the values and
leases and bumps the generations living there; the members of the bumped tags (value keys of
any slot, dead by the new generation already) are unlinked afterwards, outside any script;
then one SPUBLISH tells every API instance. Redis first, the message after, as on one Redis:
an instance that evicts its L1 on the message cannot refill it from Redis with the old value.

A flush bumps the epoch of all 16384 slots, one script per master, then SPUBLISHes one flush
message (pgbust/lua.py BUMP_SLOT_EPOCHS). RedisCache.invalidate / bump_epoch call it when
the keyspace is a cluster's (README, Redis Cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from pgbust import lua
from pgbust.keys import ClusterNames, Keyspace
from pgbust.protocol import Invalidation, Targets, flush_message
from pgbust.redis_connect import cluster_faults_as_redis_errors
from pgbust.slots import SLOTS, key_slot

INLINE_MEMBER_LIMIT = 256


@dataclass
class _SlotWork:
    values: list[str] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    garbage: list[str] = field(default_factory=list)

    def keys(self) -> list[str]:
        return [*self.values, *self.leases, *self.generations, *self.members, *self.garbage]


@dataclass(frozen=True, slots=True)
class ClusterInvalidateResult:
    slots: int  # scripts run
    freed: int  # member keys unlinked outside the scripts
    garbage: list[str]  # renamed member sets left for a worker
    receivers: int


class ClusterInvalidation:
    """home_of(entry): the entry's home tag (its first declared tag, or the entry itself)."""

    def __init__(
        self, client: aioredis.Redis, keyspace: Keyspace, home_of: Callable[[str], str]
    ) -> None:
        assert keyspace.cluster, "a cluster keyspace"
        self.client = client
        self.keyspace = keyspace
        self.names = ClusterNames(keyspace.namespace)
        self.home_of = home_of
        self._invalidate_slot = client.register_script(lua.INVALIDATE_SLOT)
        self.node_refusals = 0  # INVALIDATE_NODE refused (topology changed): slot by slot

    def plan(self, targets: Targets) -> dict[int, _SlotWork]:
        """The work of each slot (pure): which keys each slot's script gets."""
        names = self.names
        work: dict[int, _SlotWork] = {}
        suffix = uuid.uuid4().hex[:12]
        for entry in sorted(targets.keys):
            home = self.home_of(entry)
            value = names.value(entry, home)
            slot = work.setdefault(key_slot(value), _SlotWork())
            slot.values.append(value)
            slot.leases.append(names.lease(entry, home))
        for tag in sorted(targets.tags):
            generation = names.tag_generation(tag)
            slot = work.setdefault(key_slot(generation), _SlotWork())
            slot.generations.append(generation)
            slot.members.append(names.tag_members(tag))
            slot.garbage.append(f"{{{tag}}}{self.keyspace.namespace}:gc:{tag}:{suffix}")
        return work

    @cluster_faults_as_redis_errors
    async def invalidate(self, targets: Targets, message: Invalidation) -> ClusterInvalidateResult:
        if targets.flush:
            await self.flush(message.reason or "flush", message.origin)
            return ClusterInvalidateResult(SLOTS, 0, [], 0)
        freed: list[str] = []
        garbage: list[str] = []
        work = self.plan(targets)
        await self.client.initialize()  # the slot map, once
        nodes = self._by_node(work)
        replies = await asyncio.gather(*(self._on_node(s) for s in nodes), return_exceptions=True)
        failed = [r for r in replies if isinstance(r, BaseException)]
        if failed:
            await self._tell_anyway(message)
            raise failed[0]
        for members, renamed in replies:  # type: ignore[misc]
            freed += [_text(k) for k in members]
            garbage += [_text(k) for k in renamed]
        if freed:
            await self.client.unlink(*freed)  # redis-py splits it per slot
        receivers = int(await self.client.spublish(self.keyspace.channel, message.encode()))
        return ClusterInvalidateResult(len(work), len(freed), garbage, receivers)

    async def _tell_anyway(self, message: Invalidation) -> None:
        """A node failed its part (down, failing over): the caller retries it (widened to a
        flush), but the instances are told now, so that the entries of every other node leave
        their L1 at once instead of when the missing heartbeats stop it. Evicting L1 early is
        always safe; an instance cannot refill it from the failed node's old values while the
        node is unreachable, and after a promotion the flush follows (the sink's retry, the
        topology watch). Best effort: the retry's flush message follows anyway."""
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await self.client.spublish(self.keyspace.channel, message.encode())

    def _by_node(self, work: dict[int, _SlotWork]) -> list[list[_SlotWork]]:
        """The slots' work grouped by the master serving each slot (cached topology)."""
        cluster: Any = self.client
        groups: dict[str, list[_SlotWork]] = {}
        for slot, slot_work in work.items():
            node = cluster.nodes_manager.get_node_from_slot(slot)
            groups.setdefault(node.name, []).append(slot_work)
        return list(groups.values())

    async def _on_node(self, slots: list[_SlotWork]) -> tuple[list[Any], list[Any]]:
        """One INVALIDATE_NODE for every slot of one node; when the node refuses it (a slot
        moved, a failover, a lost connection) the per-slot scripts, routed by redis-py."""
        cluster: Any = self.client
        if len(slots) > 1:
            args: list[Any] = [INLINE_MEMBER_LIMIT]
            for slot in slots:
                args += [len(slot.values), len(slot.generations), *slot.keys()]
            first = slots[0].values[:1] or slots[0].generations[:1]
            node = cluster.get_node_from_key(first[0])
            try:
                freed, garbage = await cluster.execute_command(
                    "EVAL", lua.INVALIDATE_NODE, 0, *args, target_nodes=node
                )
                return list(freed), list(garbage)
            except (RedisError, OSError):
                self.node_refusals += 1
                await cluster.nodes_manager.initialize()  # then slot by slot, as routed
        freed, garbage = [], []
        for slot in slots:
            members, renamed = await self._invalidate_slot(
                keys=slot.keys(),
                args=[len(slot.values), len(slot.generations), INLINE_MEMBER_LIMIT],
            )
            freed += members
            garbage += renamed
        return freed, garbage

    @cluster_faults_as_redis_errors
    async def flush(self, reason: str, origin: str) -> int:
        """Bump every slot's epoch (one script per master, over the slots it serves), then one
        flush message; returns the receivers. A node that no longer serves a slot refuses the
        script (MOVED): the topology is refreshed and the flush raises, for the caller's retry
        (a flush that did not finish is pending, never done)."""
        cluster: Any = self.client
        await cluster.nodes_manager.initialize()
        by_node: dict[str, tuple[Any, list[str]]] = {}
        for slot in range(SLOTS):
            node = cluster.nodes_manager.get_node_from_slot(slot)
            by_node.setdefault(node.name, (node, []))[1].append(self.names.epoch(slot))
        bumped = 0
        for node, keys in by_node.values():
            reply = await cluster.execute_command(
                "EVAL", lua.BUMP_SLOT_EPOCHS, 1, *keys, target_nodes=node
            )
            bumped += int(reply)
        if bumped != SLOTS:
            raise RuntimeError(f"flush bumped {bumped} of {SLOTS} slot epochs")
        message = flush_message(reason, origin).encode()
        return int(await self.client.spublish(self.keyspace.channel, message))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
