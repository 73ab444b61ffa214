"""What each task does, as plain async functions over the one Redis adapter (RedisCache).

No Celery here: tasks.py wraps these, tests and the CLI can call them directly. Every job is
idempotent: running it twice, or again after being killed halfway, ends in the same state.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ExecAbortError, OutOfMemoryError

from pgbust.entries import Entries, UndeclaredEntry, UnknownEntry
from pgbust.keys import ClusterNames
from pgbust.protocol import Busy, Hit, Invalidation, NotLive, Refused, Targets
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import is_cluster
from pgbust.replica import UNKNOWN_LSN
from pgbust.slots import group_by_slot, key_slot
from worker import lua

log = logging.getLogger(__name__)


def _unlink_dead(cache: RedisCache) -> AsyncScript:
    return cache.client.register_script(lua.UNLINK_DEAD)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- retry an invalidation that could not reach Redis ---------------------------------------


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    garbage: list[str]
    epoch_bumped: bool


async def retry_invalidation(
    cache: RedisCache, targets: Targets, reason: str, enqueued_ms: int
) -> RetryOutcome:
    """Apply the targets now that Redis answers, then make sure the epoch moved past the outage.

    Whatever Redis held while it was unreachable may have missed other invalidations too, so
    the namespace epoch is bumped, unless a bump already happened after this task was
    enqueued (the epoch is a microsecond timestamp on the Redis clock, compared with the
    enqueuer's clock): one outage costs one flush, not one per pending task. A restarted
    server is noticed by ensure_server_identity the same way.
    The read replicas' LSN marker is deleted with the invalidation: the worker knows no LSN
    for changes committed long ago, so readers use the primary until the invalidator raises
    the marker again (pgbust/replica.py); without a replica nobody reads it.
    Raises redis errors while Redis is still down (the task retries with backoff).
    """
    restarted = await cache.ensure_server_identity(origin="worker")
    message = Invalidation.of(targets, origin="worker", reason=f"retry: {reason}")
    result = await cache.invalidate(targets, message, lsn=UNKNOWN_LSN)
    bumped = targets.flush or restarted is not None
    if await cache.current_epoch() < enqueued_ms * 1000:
        await cache.bump_epoch(f"redis came back: {reason}", origin="worker")
        bumped = True
    return RetryOutcome(garbage=result.garbage, epoch_bumped=bumped)


# --- reclaim memory in chunks ----------------------------------------------------------------


def tag_of_garbage_key(namespace: str, garbage_key: str) -> str:
    """ "<ns>:gc:<tag>:<suffix>" (named by RedisCache.invalidate) -> "<tag>"."""
    body = garbage_key.removeprefix(f"{namespace}:gc:")
    return body.rsplit(":", 1)[0]


async def collect_garbage(cache: RedisCache, garbage_keys: list[str], chunk: int) -> int:
    """UNLINK the dead values listed in renamed tag member sets, `chunk` members per command.

    Members are read (SRANDMEMBER), unlinked if still dead, then removed (SREM): a worker
    killed in between leaves them listed for the redo. Returns the number of values unlinked.
    """
    ks = cache.keyspace
    if ks.cluster:
        return await _collect_garbage_on_cluster(cache, garbage_keys, chunk)
    unlink_dead = _unlink_dead(cache)
    freed = 0
    for garbage_key in garbage_keys:
        tag_generation = ks.tag_generation(tag_of_garbage_key(ks.namespace, garbage_key))
        while True:
            raw: list[bytes] = await cache.client.srandmember(garbage_key, chunk)  # type: ignore[assignment]
            members = [_text(m) for m in raw]
            if not members:
                break
            freed += int(await unlink_dead(keys=[ks.epoch, tag_generation, *members], args=["1"]))
            await cache.client.srem(garbage_key, *members)
        await cache.client.unlink(garbage_key)
    return freed


@dataclass(frozen=True, slots=True)
class PurgeOutcome:
    scanned: int
    unlinked: int
    unlisted: int  # tag-set members whose value is gone


async def _collect_garbage_on_cluster(
    cache: RedisCache, garbage_keys: list[str], chunk: int
) -> int:
    """collect_garbage on a Redis Cluster ("{tag}<ns>:gc:<tag>:<suffix>"). Members of the
    tag's own slot (entries whose home it is) are unlinked if still dead by the stamp check,
    as on one Redis; members of other slots carry the tag in their row section, where only
    the reader's time guard can judge them: they are unlinked as they are. A value refilled
    since (under the same key) is then lost: a miss, never a stale read."""
    names = ClusterNames(cache.keyspace.namespace)
    unlink_dead = _unlink_dead(cache)
    freed = 0
    for garbage_key in garbage_keys:
        tag = garbage_key.split(f"}}{names.namespace}:gc:", 1)[1].rsplit(":", 1)[0]
        generation = names.tag_generation(tag)
        home_slot = key_slot(generation)
        while True:
            raw: list[bytes] = await cache.client.srandmember(garbage_key, chunk)  # type: ignore[assignment]
            members = [_text(m) for m in raw]
            if not members:
                break
            for slot, values in group_by_slot(members).items():
                if slot == home_slot:
                    keys = [names.epoch(slot), generation, *values]
                    freed += int(await unlink_dead(keys=keys, args=["1"]))
                else:
                    freed += int(await cache.client.unlink(*values))
            await cache.client.srem(garbage_key, *members)
        await cache.client.unlink(garbage_key)
    return freed


async def purge_dead(cache: RedisCache, chunk: int) -> PurgeOutcome:
    """SCAN the namespace's values and UNLINK those of an old epoch, `chunk` keys per command,
    then drop the tag-set members whose value is gone.

    After an epoch bump (flush, TRUNCATE, Redis came back) every old value is already a miss;
    this only frees the memory, without any command that holds Redis for long.
    """
    ks = cache.keyspace
    if ks.cluster:
        return await _purge_dead_on_cluster(cache, chunk)
    unlink_dead = _unlink_dead(cache)
    scanned = unlinked = 0
    async for names in _scan_batches(cache, ks.value_pattern, chunk):
        scanned += len(names)
        unlinked += int(await unlink_dead(keys=[ks.epoch, *names], args=["0"]))
    unlisted = 0
    unlist_missing = cache.client.register_script(lua.UNLIST_MISSING)
    async for tag_sets in _scan_batches(cache, ks.tag_members("*"), chunk):
        for tag_set in tag_sets:
            cursor = 0
            while True:
                cursor, members = await cache.client.sscan(tag_set, cursor, count=chunk)
                if members:
                    keys = [tag_set, *(_text(m) for m in members)]
                    unlisted += int(await unlist_missing(keys=keys))
                if int(cursor) == 0:
                    break
    return PurgeOutcome(scanned, unlinked, unlisted)


async def _purge_dead_on_cluster(cache: RedisCache, chunk: int) -> PurgeOutcome:
    """purge_dead on a Redis Cluster: each master is SCANned for the namespace's values
    ("{home}<ns>:v:...", keys.ClusterNames), and each slot's dead ones are unlinked by
    UNLINK_DEAD against that slot's own epoch (one slot per script). Tag member sets are left
    alone there (their members live in other slots; an invalidation of the tag frees them)."""
    names = ClusterNames(cache.keyspace.namespace)
    unlink_dead = _unlink_dead(cache)
    scanned = unlinked = 0
    async for found in scan_cluster_values(cache, chunk):
        scanned += len(found)
        for slot, values in group_by_slot(found).items():
            for start in range(0, len(values), chunk):
                part = values[start : start + chunk]
                keys_of_slot = [names.epoch(slot), *part]
                unlinked += int(await unlink_dead(keys=keys_of_slot, args=["0"]))
    return PurgeOutcome(scanned, unlinked, 0)


async def scan_cluster_values(
    cache: RedisCache, chunk: int, *, shuffled: bool = False
) -> AsyncGenerator[list[str], None]:
    """The namespace's value keys on a Redis Cluster, master by master (in random order when
    shuffled), one SCAN reply at a time."""
    cluster: Any = cache.client
    pattern = ClusterNames(cache.keyspace.namespace).value_pattern
    await cluster.initialize()
    primaries = list(cluster.get_primaries())
    if shuffled:
        random.shuffle(primaries)
    for node in primaries:
        cursor = 0
        while True:
            # redis-py answers a cluster SCAN with ({node: cursor}, keys), even for one node
            cursors, keys = await cluster.execute_command(
                "SCAN", cursor, "MATCH", pattern, "COUNT", chunk, target_nodes=node
            )
            cursor = int(next(iter(cursors.values())))
            yield [_text(k) for k in keys]
            if cursor == 0:
                break


async def _scan_batches(cache: RedisCache, pattern: str, chunk: int) -> AsyncIterator[list[str]]:
    """Key names matching pattern, in lists of at most `chunk` (SCAN's COUNT is only a hint)."""
    cursor = 0
    while True:
        cursor, keys = await cache.client.scan(cursor, match=pattern, count=chunk)
        names = [_text(k) for k in keys]
        for start in range(0, len(names), chunk):
            yield names[start : start + chunk]
        if int(cursor) == 0:
            return


# --- refresh-ahead -------------------------------------------------------------------------


@dataclass(slots=True)
class WarmOutcome:
    filled: list[str] = field(default_factory=list)
    already_cached: int = 0
    busy: int = 0
    missing: int = 0
    unknown: int = 0
    refused: int = 0
    not_live: int = 0  # no live capture: nothing is filled until an invalidator proves it

    def as_counts(self) -> dict[str, int]:
        return {
            "warm_filled": len(self.filled),
            "warm_already_cached": self.already_cached,
            "warm_busy": self.busy,
            "warm_missing": self.missing,
            "warm_unknown": self.unknown,
            "warm_refused": self.refused,
            "warm_not_live": self.not_live,
        }


async def warm(
    cache: RedisCache,
    conn: AsyncConnection[Any],
    entries: list[str],
    *,
    served: Entries,
    ttl_ms: int = 0,
    lease_ms: int = 2_000,
) -> WarmOutcome:
    """Recompute entries exactly as a reader would: lease, load from Postgres, guarded fill.

    An entry already cached, or being filled by a reader (Busy), is left alone; a fill that
    loses to an invalidation in between is refused by the fill guard, never stored stale. A
    full Redis stores nothing: the entry counts as refused and its lease is given back.
    """
    outcome = WarmOutcome()
    for entry in entries:
        try:
            tags = served.tags(entry)
        except UndeclaredEntry:
            outcome.unknown += 1  # not an entry of this declaration: nothing to warm
            continue
        lease = await cache.get_or_lease(entry, lease_ms=lease_ms, tags=tags)
        if isinstance(lease, Hit):
            outcome.already_cached += 1
            continue
        if isinstance(lease, Busy):
            outcome.busy += 1
            continue
        if isinstance(lease, Refused):
            outcome.refused += 1
            continue
        if isinstance(lease, NotLive):
            outcome.not_live += 1
            continue
        try:
            computed = await served.compute(conn, entry)
        except (UnknownEntry, UndeclaredEntry):
            await cache.release_lease(entry, lease.token, tags=tags)
            outcome.unknown += 1  # no loader serves it: nothing to warm
            continue
        if computed is None:
            outcome.missing += 1  # the lease expires by itself; readers get 404 from the API
            continue
        try:
            stored = await cache.fill(
                entry,
                lease.token,
                lease.stamp,
                computed.payload,
                ttl_ms,
                tags=computed.tags,
                rows=computed.rows,
                since=lease.since,
            )
        except OutOfMemoryError:
            await cache.release_lease(entry, lease.token, tags=tags)
            stored = 0
        if stored == 1:
            outcome.filled.append(entry)
        else:
            outcome.refused += 1
    return outcome


# --- hot-key bookkeeping ---------------------------------------------------------------------

HOT_MIN_SCORE = 0.25


async def decay_hot(cache: RedisCache, hot_max: int) -> int:
    """Halve every sampled read count, drop the faded ones, keep at most hot_max entries.

    Old popularity fades (a key read a lot yesterday is not hot now) and the zset stays
    bounded. Returns the number of entries left.
    """
    hot = cache.keyspace.hot
    try:
        if is_cluster(cache.client):
            return int(await cache.client.eval(lua.DECAY_HOT, 1, hot, HOT_MIN_SCORE, hot_max))
        async with cache.client.pipeline(transaction=True) as pipe:
            pipe.zunionstore(hot, {hot: 0.5})
            pipe.zremrangebyscore(hot, "-inf", f"({HOT_MIN_SCORE}")
            pipe.zremrangebyrank(hot, 0, -(hot_max + 1))
            pipe.zcard(hot)
            replies = await pipe.execute()
    except (OutOfMemoryError, ExecAbortError):  # a full Redis refuses ZUNIONSTORE
        log.warning("redis is full: hot keys not decayed this time")
        return int(await cache.client.zcard(hot))
    return int(replies[-1])
