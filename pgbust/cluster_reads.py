"""The read path on a Redis Cluster: every script in the slot of the entry's home.

keys.ClusterNames puts an entry's value and lease, its first tag's generation and members,
and the epoch of that slot in one slot, so GET_OR_LEASE, FILL, PEEK and RELEASE_LEASE run
there atomically as on one Redis (pgbust/lua.py *_CLUSTER). What lives elsewhere is checked
outside the scripts, in an order that keeps the one-Redis guarantees:

- the entry's other tags and its row tags (other slots): their generations are read after
  the script, with the time guard row tags already use on one Redis (a generation at or past
  the lease's `since` is a bump after the lease: dead). A fill checks them before the FILL
  script and again after it (a bump in between refuses the fill for L1, and kills the stored
  value for every later reader); every hit checks them after reading the value. A generation
  only grows (lua.py, "Guard keys may vanish"), so seeing it older than `since` after reading
  the value means it was older when the value was read;
- the generations of other slots come from other nodes' clocks: the guard allows
  CLOCK_SKEW_US between them (a bump on a node whose clock lags the home node's by less than
  that still counts as after the lease). Larger skews are outside what this guards. The
  cost: for CLOCK_SKEW_US after a bump (or the first use) of a tag of another slot, fills of
  the entries filed under it are refused (they read the database, as a miss does);
- the capture liveness key (the namespace's slot) is read with a GET *before* the script:
  what the script then reads is at least as fresh as what the one-Redis gated script would
  have read at the moment of the GET, which is when the gate held (DESIGN invariant 8);
- with read replicas, the LSN marker (its own slot) is read with a GET *after* a lease was
  granted. The invalidator raises it before it runs an invalidation's scripts
  (RedisCache.invalidate), so a lease granted after the entry's invalidation was applied
  reads a marker at or past that change's commit, as the one-Redis GET_OR_LEASE returns it
  atomically with the grant; a lease granted before it is deleted by it (the fill is refused).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from pgbust import lua
from pgbust.keys import ClusterNames, Keyspace
from pgbust.protocol import NOT_LIVE, Hit, Lease, LeaseResult, parse_get_or_lease, strip_stamp
from pgbust.redis_connect import cluster_faults_as_redis_errors
from pgbust.replica import parse_marker

# How far the clocks of two cluster nodes may drift apart and the time guard still hold
# (NTP keeps hosts of one network within a few milliseconds).
CLOCK_SKEW_US = 20_000


class ClusterReads:
    """GET_OR_LEASE / FILL / RELEASE_LEASE / PEEK of one namespace on a cluster client."""

    def __init__(
        self,
        client: aioredis.Redis,
        keyspace: Keyspace,
        *,
        require_live_capture: bool,
        lsn_marker: bool = False,
    ) -> None:
        assert keyspace.cluster, "a cluster keyspace"
        self.client = client
        self.keyspace = keyspace
        self.names = ClusterNames(keyspace.namespace)
        self.require_live_capture = require_live_capture
        self.lsn_marker = lsn_marker  # leases carry the read replicas' marker (Lease.marker)
        self._get_or_lease: AsyncScript = client.register_script(lua.GET_OR_LEASE_CLUSTER)
        self._fill: AsyncScript = client.register_script(lua.FILL_CLUSTER)
        self._peek: AsyncScript = client.register_script(lua.PEEK_CLUSTER)
        self._release: AsyncScript = client.register_script(lua.RELEASE_LEASE)
        self._create_generation: AsyncScript = client.register_script(lua.CREATE_GENERATION)
        self._generation_prefix = f"{keyspace.namespace}:g:"

    # --- names ------------------------------------------------------------------------------

    def value_key(self, entry: str, tags: tuple[str, ...]) -> str:
        return self.names.value(entry, tags[0] if tags else entry)

    def _home_keys(self, entry: str, tags: tuple[str, ...]) -> list[str]:
        """epoch, value, lease[, home tag generation]: all in the home's slot."""
        home = tags[0] if tags else entry
        value = self.names.value(entry, home)
        keys = [self.names.epoch_of(value), value, self.names.lease(entry, home)]
        if tags:
            keys.append(self.names.tag_generation(home))
        return keys

    def tag_of_generation(self, key: str) -> str:
        """ "{tag}<ns>:g:<tag>" -> tag."""
        return key.split(self._generation_prefix, 1)[1]

    # --- the guard outside the scripts ------------------------------------------------------

    async def _generations(self, keys: list[str]) -> list[int | None]:
        # one GET per key, concurrently (each may live on another node)
        values = await asyncio.gather(*(self.client.get(key) for key in keys))
        return [int(v) if v is not None else None for v in values]

    async def _rows_verdict(self, keys: list[str], since: int, *, create: bool = True) -> int:
        """1 all older than the lease (live), -1 one bumped since (dead), -2 one missing:
        created now unless create=False (a later lease can fill)."""
        if not keys:
            return 1
        generations = await self._generations(keys)
        missing = [k for k, g in zip(keys, generations, strict=True) if g is None]
        for key in missing if create else ():
            await self._create_generation(keys=[key])
        if any(g is not None and g >= since - CLOCK_SKEW_US for g in generations):
            return -1
        return -2 if missing else 1

    # --- reads ------------------------------------------------------------------------------

    @cluster_faults_as_redis_errors
    async def get_or_lease(
        self, entry: str, token: str, lease_ms: int, tags: tuple[str, ...]
    ) -> LeaseResult:
        if self.require_live_capture and not await self.client.exists(self.keyspace.capture_alive):
            return NOT_LIVE
        keys = self._home_keys(entry, tags)
        reply = await self._get_or_lease(keys=keys, args=[token, lease_ms, "0"])
        result = parse_get_or_lease(reply, token)
        if not (isinstance(result, Hit) and result.rows):
            return await self._with_marker(result)
        since = int(_text(reply[1]).split("\n")[1])
        if await self._rows_verdict(list(result.rows), since) == 1:
            return Hit(result.payload, tuple(self.tag_of_generation(k) for k in result.rows))
        # dead by a tag of another slot: read as a miss (ignore the value, lease if free)
        reply = await self._get_or_lease(keys=keys, args=[token, lease_ms, "1"])
        return await self._with_marker(parse_get_or_lease(reply, token))

    async def _with_marker(self, result: LeaseResult) -> LeaseResult:
        """A granted lease with the LSN marker read after the grant (the module doc)."""
        if not (self.lsn_marker and isinstance(result, Lease)):
            return result
        marker = parse_marker(await self.client.get(self.keyspace.lsn_marker))
        return dataclasses.replace(result, marker=marker)

    @cluster_faults_as_redis_errors
    async def fill(
        self,
        entry: str,
        token: str,
        stamp: str,
        payload: bytes,
        ttl_ms: int,
        tags: tuple[str, ...],
        rows: tuple[str, ...],
        since: int,
    ) -> int:
        """As RedisCache.fill: 1 stored, 0 lease lost, -1 invalidated, -2 untracked rows."""
        others = [self.names.tag_generation(t) for t in (*tags[1:], *rows)]
        verdict = await self._rows_verdict(others, since)
        if verdict != 1:
            await self.release_lease(entry, token, tags)  # FILL gives it up too
            return verdict
        keys = self._home_keys(entry, tags)
        if tags:
            keys.append(self.names.tag_members(tags[0]))
        args: list[Any] = [token, stamp, payload, ttl_ms, "1" if tags else "0", since, *others]
        stored = int(await self._fill(keys=keys, args=args))
        if stored != 1 or not others:
            return stored
        value = keys[1]
        # members of the other tags, for the invalidation to unlink (memory only: the value is
        # dead by their generations already); then the guard once more: a bump between the
        # check above and the FILL must keep this value out of L1
        members = [self.names.tag_members(t) for t in (*tags[1:], *rows)]
        await asyncio.gather(*(self.client.sadd(key, value) for key in members))
        return 1 if await self._rows_verdict(others, since) == 1 else -1

    @cluster_faults_as_redis_errors
    async def release_lease(self, entry: str, token: str, tags: tuple[str, ...]) -> bool:
        home = tags[0] if tags else entry
        reply = await self._release(keys=[self.names.lease(entry, home)], args=[token])
        return bool(int(reply))

    @cluster_faults_as_redis_errors
    async def peek(self, entry: str, tags: tuple[str, ...]) -> bytes | None:
        keys = self._home_keys(entry, tags)
        keys.pop(2)  # PEEK: epoch, value[, tag generation]
        value = await self._peek(keys=keys)
        if not value:
            return None
        raw = value if isinstance(value, bytes) else str(value).encode()
        head = raw.split(b"|", 1)[0].decode()
        if "\n" in head:
            parts = head.split("\n")
            if await self._rows_verdict(parts[2:], int(parts[1]), create=False) != 1:
                return None
        return strip_stamp(raw)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
