"""The one Redis adapter of the cache protocol (asyncio): reads with leases, guarded fills,
invalidation + publish, epoch bumps. API, invalidator and worker all go through it."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from pgbust import lua
from pgbust.cluster_invalidation import ClusterInvalidation
from pgbust.cluster_reads import ClusterReads
from pgbust.keys import ClusterNames, Keyspace
from pgbust.protocol import (
    Heartbeat,
    Hit,
    Invalidation,
    LeaseResult,
    Targets,
    flush_message,
    parse_get_or_lease,
    strip_stamp,
)
from pgbust.redis_connect import cluster_faults_as_redis_errors
from pgbust.redis_lane import Lane
from pgbust.replica import UNKNOWN_LSN, marker_text

DEFAULT_LEASE_MS = 2_000
# Tag members freed inside the invalidation script; the rest is handed to a worker so no
# single Redis command runs long.
INLINE_MEMBER_LIMIT = 256


@dataclass(frozen=True, slots=True)
class InvalidateResult:
    receivers: int
    garbage: list[str]  # renamed tag member sets left for a worker to UNLINK in chunks


class RedisCache:
    """require_live_capture: reads and leases only while an active invalidator proves its
    capture channel alive (keyspace.capture_alive), else NotLive. Only a cache that nobody
    invalidates by events (the API's ttl mode) turns it off.

    lsn_marker: leases carry the read replicas' LSN marker (Lease.marker, pgbust/replica.py),
    read in the same script as the grant; only a cache that reads a replica asks for it.

    pipelined: the read path's scripts (get_or_lease, fill, release_lease) go over one
    connection of their own, pipelined (pgbust.redis_lane: same scripts, same errors, same
    server identity check, a fraction of redis-py's CPU per call); for a process that serves
    reads. Call close() when done with it (Cache does).

    On a Redis Cluster (keyspace.cluster) every call goes to the cluster design instead:
    reads and fills to pgbust.cluster_reads (one slot per script, the other slots checked
    outside), invalidations and flushes to pgbust.cluster_invalidation, which needs
    home_of(entry) (Declaration.home_of) to find where an entry lives. The lane is not used
    there (one connection cannot reach every node): plain cluster client calls. The LSN
    marker there is raised *before* an invalidation's per-slot scripts and read after the
    lease (pgbust/replica.py)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keyspace: Keyspace,
        *,
        require_live_capture: bool = True,
        lsn_marker: bool = False,
        pipelined: bool = False,
        home_of: Callable[[str], str] | None = None,
    ) -> None:
        self.client = client
        self.keyspace = keyspace
        self.require_live_capture = require_live_capture
        # lease tokens: unique without a uuid4 per miss (64 random bits per cache, a counter)
        self._token_prefix = secrets.token_hex(8) + "."
        self._token_numbers = itertools.count(1)
        self.lsn_marker = lsn_marker
        if lsn_marker:
            get_or_lease = (
                lua.GET_OR_LEASE_IF_LIVE_WITH_LSN
                if require_live_capture
                else lua.GET_OR_LEASE_WITH_LSN
            )
        else:
            get_or_lease = lua.GET_OR_LEASE_IF_LIVE if require_live_capture else lua.GET_OR_LEASE
        self._get_or_lease: AsyncScript = client.register_script(get_or_lease)
        self._heartbeat: AsyncScript = client.register_script(
            lua.HEARTBEAT_SHARDED if keyspace.cluster else lua.HEARTBEAT
        )
        self._fill: AsyncScript = client.register_script(lua.FILL)
        self._invalidate: AsyncScript = client.register_script(lua.INVALIDATE)
        self._bump_epoch: AsyncScript = client.register_script(lua.BUMP_EPOCH)
        self._ensure_server: AsyncScript = client.register_script(lua.ENSURE_SERVER)
        self._peek: AsyncScript = client.register_script(lua.PEEK)
        self._release_lease: AsyncScript = client.register_script(lua.RELEASE_LEASE)
        # read replicas: the same scripts, raising the LSN marker first (pgbust/replica.py)
        self._invalidate_raising: AsyncScript = client.register_script(lua.INVALIDATE_RAISING_LSN)
        self._bump_epoch_raising: AsyncScript = client.register_script(lua.BUMP_EPOCH_RAISING_LSN)
        self._raise_lsn: AsyncScript = client.register_script(lua.RAISE_LSN)
        read_path = (self._get_or_lease, self._fill, self._release_lease)
        self._lane: Lane | None = None
        self._cluster_reads: ClusterReads | None = None
        self._cluster: ClusterInvalidation | None = None
        if keyspace.cluster:
            self._cluster_reads = ClusterReads(
                client, keyspace, require_live_capture=require_live_capture, lsn_marker=lsn_marker
            )
            self._cluster = ClusterInvalidation(client, keyspace, home_of or _no_home)
        elif pipelined:
            self._lane = Lane(client, tuple(s.script for s in read_path))

    def close(self) -> None:
        """Close the pipelined lane, if any (the client is the caller's to close)."""
        if self._lane is not None:
            self._lane.close()

    async def _run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        if self._lane is not None:
            return await self._lane.evalsha(script.sha, script.script, keys, args)
        return await script(keys=keys, args=args)

    def count_hot_nowait(self, entry: str) -> asyncio.Future[Any] | None:
        """ZINCRBY the hot set over the lane without waiting (the future has the reply);
        None when there is no open lane (send it with the client instead)."""
        if self._lane is None:
            return None
        return self._lane.send_nowait("ZINCRBY", self.keyspace.hot, 1, entry)

    @cluster_faults_as_redis_errors  # a cluster client's own faults: RedisError
    async def remaining_ms(self, entry: str, tags: tuple[str, ...]) -> int:
        """PTTL of the entry's value (-2: none, -1: no TTL)."""
        return int(await self.client.pttl(self.value_key(entry, tags)))

    @cluster_faults_as_redis_errors
    async def count_hot(self, counts: Mapping[str, int]) -> None:
        """ZINCRBY the hot set by each entry's count, all in one pipeline (on a cluster the
        hot set is one key: one node, one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for entry, count in counts.items():
            pipe.zincrby(self.keyspace.hot, count, entry)
        await pipe.execute()

    # --- reads and fills ------------------------------------------------------------------

    # An entry's first tag is part of its stamp (checked on every read in O(1)); the others
    # are guarded like row tags (filed in the value, live while older than the lease), so
    # one Lua protocol serves any number of tags.

    def _entry_keys(self, entry: str, tags: tuple[str, ...]) -> list[str]:
        ks = self.keyspace
        keys = [ks.epoch, ks.value(entry), ks.lease(entry)]
        if tags:
            keys.append(ks.tag_generation(tags[0]))
        return keys

    async def get_or_lease(
        self, entry: str, lease_ms: int = DEFAULT_LEASE_MS, *, tags: tuple[str, ...]
    ) -> LeaseResult:
        """A live value, a lease to fill it, or why neither. tags: the tags the entry is
        filed under (Declaration.resolve), the same as its fill's."""
        token = f"{self._token_prefix}{next(self._token_numbers):x}"
        if self._cluster_reads is not None:
            return await self._cluster_reads.get_or_lease(entry, token, lease_ms, tags)
        keys = self._entry_keys(entry, tags)
        if self.require_live_capture:
            keys.insert(0, self.keyspace.capture_alive)
        if self.lsn_marker:
            keys.append(self.keyspace.lsn_marker)
        reply = await self._run(self._get_or_lease, keys, [token, lease_ms])
        result = parse_get_or_lease(reply, token)
        if isinstance(result, Hit) and result.rows:
            name = self.keyspace.tag_of_generation
            return Hit(result.payload, tuple(name(key) for key in result.rows))
        return result

    async def fill(
        self,
        entry: str,
        token: str,
        stamp: str,
        payload: bytes,
        ttl_ms: int = 0,
        *,
        tags: tuple[str, ...],
        rows: tuple[str, ...],
        since: int,
    ) -> int:
        """Store payload if the lease is still ours and nothing was invalidated meanwhile.

        tags: the entry's tags (as given to get_or_lease); rows: the row tags of what the
        payload holds (EntryType.row_tags), filed with it; since: the lease's grant time
        (Lease.since). All are required so that no fill path can forget them (a page filled
        without its rows would outlive a change of a order it shows).

        Returns 1 when stored, 0 when the lease was lost, -1 when the epoch, the tag or a row
        tag changed, -2 when a row tag had no generation yet (created: the next lease fills).
        A full Redis refuses it (redis.exceptions.OutOfMemoryError): give the lease back.
        """
        ks = self.keyspace
        for row in (*tags[1:], *rows):
            if "|" in row or "\n" in row:
                raise ValueError(f"a row tag may not hold '|' or a newline: {row!r}")
        if self._cluster_reads is not None:
            return await self._cluster_reads.fill(
                entry, token, stamp, payload, ttl_ms, tags, rows, since
            )
        keys = self._entry_keys(entry, tags)
        tag = tags[0] if tags else None
        if tag is not None:
            keys.append(ks.tag_members(tag))
        for row in (*tags[1:], *rows):
            keys += (ks.tag_generation(row), ks.tag_members(row))
        args: list[Any] = [token, stamp, payload, ttl_ms, "1" if tag is not None else "0", since]
        return int(await self._run(self._fill, keys, args))

    async def release_lease(self, entry: str, token: str, *, tags: tuple[str, ...] = ()) -> bool:
        """Give a lease back without filling (the row did not exist); False if not ours.
        tags: the entry's tags (a cluster finds the lease by its home, the first tag)."""
        if self._cluster_reads is not None:
            return await self._cluster_reads.release_lease(entry, token, tags)
        reply = await self._run(self._release_lease, [self.keyspace.lease(entry)], [token])
        return bool(int(reply))

    async def peek(self, entry: str, *, tags: tuple[str, ...]) -> bytes | None:
        """The live payload of an entry, or None; takes no lease (for audits and tests)."""
        if self._cluster_reads is not None:
            return await self._cluster_reads.peek(entry, tags)
        ks = self.keyspace
        keys = [ks.epoch, ks.value(entry)]
        if tags:
            keys.append(ks.tag_generation(tags[0]))
        value = await self._peek(keys=keys)
        return strip_stamp(value) if value else None

    # --- invalidation ---------------------------------------------------------------------

    async def invalidate(
        self, targets: Targets, message: Invalidation, *, lsn: int | None = None
    ) -> InvalidateResult:
        """Delete the targets from Redis and publish one message, atomically, in one call.

        lsn: also raise the read replicas' LSN marker to it in that call (at or past the commit
        of every change the targets cover; UNKNOWN_LSN deletes the marker); None: leave it."""
        if targets.flush:
            await self.bump_epoch(message.reason or "flush", origin=message.origin, lsn=lsn)
            return InvalidateResult(receivers=0, garbage=[])
        if self._cluster is not None:
            if lsn is not None:  # first: the marker is never behind an applied part
                await self.raise_lsn(lsn)
            applied = await self._cluster.invalidate(targets, message)
            return InvalidateResult(receivers=applied.receivers, garbage=applied.garbage)
        ks = self.keyspace
        keys_sorted = sorted(targets.keys)
        tags_sorted = sorted(targets.tags)
        suffix = uuid.uuid4().hex[:12]
        script_keys = (
            [ks.value(k) for k in keys_sorted]
            + [ks.lease(k) for k in keys_sorted]
            + [ks.tag_generation(t) for t in tags_sorted]
            + [ks.tag_members(t) for t in tags_sorted]
            + [f"{ks.namespace}:gc:{t}:{suffix}" for t in tags_sorted]
        )
        args: list[Any] = [
            len(keys_sorted),
            len(tags_sorted),
            ks.channel,
            message.encode(),
            INLINE_MEMBER_LIMIT,
        ]
        if lsn is None:
            receivers, garbage = await self._invalidate(keys=script_keys, args=args)
        else:
            receivers, garbage = await self._invalidate_raising(
                keys=[*script_keys, ks.lsn_marker], args=[*args, _marker_arg(lsn)]
            )
        return InvalidateResult(
            receivers=int(receivers),
            garbage=[g.decode() if isinstance(g, bytes) else str(g) for g in garbage],
        )

    async def bump_epoch(self, reason: str, origin: str, *, lsn: int | None = None) -> int:
        """Kill every entry of the namespace at once and tell every API instance to flush
        (lsn: raise the LSN marker in the same call, as in `invalidate`)."""
        if self._cluster is not None:  # every slot's epoch, the marker raised first
            if lsn is not None:
                await self.raise_lsn(lsn)
            await self._cluster.flush(reason, origin)
            return await self.current_epoch()
        message = flush_message(reason, origin).encode()
        keys = [self.keyspace.epoch]
        args: list[Any] = [self.keyspace.channel, message]
        if lsn is None:
            reply = await self._bump_epoch(keys=keys, args=args)
        else:
            reply = await self._bump_epoch_raising(
                keys=[*keys, self.keyspace.lsn_marker], args=[*args, _marker_arg(lsn)]
            )
        return int(reply)

    def value_key(self, entry: str, tags: tuple[str, ...]) -> str:
        """The Redis key of an entry's value (on a cluster it carries its home's hash tag)."""
        if self._cluster_reads is not None:
            return self._cluster_reads.value_key(entry, tags)
        return self.keyspace.value(entry)

    @cluster_faults_as_redis_errors  # a cluster client's own faults: RedisError
    async def raise_lsn(self, lsn: int) -> None:
        """Raise the LSN marker to lsn (never lowers it; UNKNOWN_LSN deletes it)."""
        await self._raise_lsn(keys=[self.keyspace.lsn_marker], args=[_marker_arg(lsn)])

    async def ensure_server_identity(self, origin: str) -> int | None:
        """Bump the epoch if Redis restarted since the namespace last saw it (new run_id).

        Returns the new epoch when it bumped, None when the server is the one already known.
        Not run on a Redis Cluster (pgbust/redis_connect.py): None.
        """
        if self.keyspace.cluster:
            return None
        info = await self.client.info("server")
        run_id = str(info["run_id"])
        message = flush_message("redis server restarted", origin).encode()
        reply = await self._ensure_server(
            keys=[self.keyspace.server_identity, self.keyspace.epoch, self.keyspace.lsn_marker],
            args=[run_id, self.keyspace.channel, message],
        )
        return int(reply) if reply else None

    # --- capture liveness -----------------------------------------------------------------

    @cluster_faults_as_redis_errors  # a cluster client's own faults: RedisError
    async def heartbeat(self, beat: Heartbeat, valid_ms: int) -> int:
        """Keep the capture liveness key for valid_ms more and publish the beat; receivers."""
        reply = await self._heartbeat(
            keys=[self.keyspace.capture_alive],
            args=[beat.sender or "1", max(1, valid_ms), self.keyspace.channel, beat.encode()],
        )
        return int(reply)

    @cluster_faults_as_redis_errors  # a cluster client's own faults: RedisError
    async def publish(self, message: bytes) -> int:
        """One message on the invalidation channel (SPUBLISH on a cluster); receivers."""
        if self.keyspace.cluster:
            return int(await self.client.spublish(self.keyspace.channel, message))
        return int(await self.client.publish(self.keyspace.channel, message))

    @cluster_faults_as_redis_errors  # a cluster client's own faults: RedisError
    async def current_epoch(self) -> int:
        """The namespace epoch (µs on the Redis clock; 0 while it is missing).

        Reads the server identity too: a key read every second stays recently used, so LRU/LFU
        eviction does not take it (its loss costs a flush at the next new connection)."""
        if self.keyspace.cluster:  # one epoch per slot: the channel's slot's stands for all
            names = ClusterNames(self.keyspace.namespace)
            value = await self.client.get(names.epoch_of(self.keyspace.channel))
            return int(value) if value else 0
        epoch, _ = await self.client.mget(self.keyspace.epoch, self.keyspace.server_identity)
        return int(epoch) if epoch else 0


def _no_home(entry: str) -> str:
    raise RuntimeError(
        f"cannot invalidate {entry!r} on a Redis Cluster without home_of "
        "(RedisCache(home_of=Declaration.home_of)): where each entry lives"
    )


def _marker_arg(lsn: int) -> str:
    """The LSN as the marker scripts take it: 16 hex digits, "" for UNKNOWN_LSN (delete)."""
    return "" if lsn == UNKNOWN_LSN else marker_text(lsn)
