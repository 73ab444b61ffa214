"""The two-tier read path: L1 (in process) -> L2 (Redis, leased) -> Postgres.

    read(entry)                                  (a declared entry: the declaration says which
                                                  tags it is filed under)
      L1 hit                                   -> payload, "L1"
      same entry already loading here          -> join it (single-flight per instance),
                                                  unless that load's ticket was voided
      ticket = L1.ticket(entry)                   (before any lower read: the L1 fill guard)
      Redis GET_OR_LEASE
        Hit    -> L1.put(ticket)               -> payload, "L2"
        Lease  -> load Postgres, [after_load hook], FILL with the loaded rows' row tags
                  (guarded in Lua: lease, stamp, rows unchanged since the lease); L1.put
                  (guarded by the ticket and the rows) only if the L2 fill was stored
                                              -> payload, "MISS"
        NotLive -> no active invalidator proves its capture channels (pgbust.lua
                  capture_gated): Redis may hold what nobody invalidated, so read Postgres,
                  fill nothing                -> payload, "MISS"
        Busy   -> another reader (maybe another instance, or a warming worker) is loading:
                  poll with backoff 0.5 ms doubling to 2 ms, for at most
                  BUSY_WAIT_BUDGET_S (and never past the lease time); a hit is served, a
                  granted lease makes us the loader; past the budget read Postgres without
                  filling (a fresh read: it cannot be a stale fill, and single-flight keeps
                  it to one such load per entry and process)
        Refused -> Redis is full (or refuses writes): no lease; Postgres, no fill in either
                  tier (without the L2 guard an L1 copy could outlive an invalidation whose
                  message is still on its way)
      FILL refused for rows no generation tracked yet (-2: created by that FILL) -> one
                  more lease, load and FILL: the first fill of a page whose orders were
                  never written costs two loads, never a fill that could be stale
      FILL refused by a full Redis -> the lease is given back, the payload served, "MISS"
      Redis unreachable -> Postgres, no fill   -> payload, "MISS"

The payload is always exactly the loader's bytes, so the HTTP layer serves it unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from cachetools import LRUCache
from redis.exceptions import OutOfMemoryError, RedisError

from pgbust.declaration import Declaration, EntryType
from pgbust.l1 import L1Cache, Ticket
from pgbust.loaders import Loaded
from pgbust.metrics import Metrics
from pgbust.protocol import Busy, Hit, Lease, NotLive, Refused
from pgbust.redis_cache import RedisCache

log = logging.getLogger(__name__)

Source = Literal["L1", "L2", "MISS"]
AfterLoadHook = Callable[[str, bytes | None], Awaitable[None]]

# Waiting behind another loader's lease: the first poll comes soon (a fill usually lands
# within a few ms) and the polls stay 2 ms apart at most: the wait overshoots the fill by
# half a poll on average, and under a saturated host the fill of a hot entry that both
# instances miss at once takes 5-15 ms, which polls 10 ms apart can turn into up to 10 ms of
# latency for nothing. A poll is one pipelined script call, and single-flight keeps it to
# one waiter per entry and process. The wait is bounded well below the lease time: past the
# budget, reading Postgres without filling is cheaper than waiting for a slow or vanished
# lease holder.
FIRST_BACKOFF_S = 0.0005
MAX_BACKOFF_S = 0.002
BUSY_WAIT_BUDGET_S = 0.1
# Resolved names (entry type and tags) kept, so an L2 hit does not match templates again.
RESOLVED_NAMES = 10_000


class Loader(Protocol):
    async def load(self, entry: str) -> Loaded | None: ...

    # a load a lease may fill: may read a replica that replayed up to marker (pgbust/replica.py)
    async def load_leased(self, entry: str, marker: int | None) -> Loaded | None: ...


@dataclass(frozen=True, slots=True)
class ReadResult:
    payload: bytes | None  # None: the row does not exist
    source: Source


class _Flight:
    """A load in flight in this process: the ticket it took, and the future of the readers
    that joined it (made when the first one does)."""

    __slots__ = ("joined", "ticket")

    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket
        self.joined: asyncio.Future[ReadResult] | None = None


class _LoaderGone(Exception):
    """The reader whose load others joined was cancelled: they read for themselves."""


class TieredCache:
    def __init__(
        self,
        *,
        declaration: Declaration,
        l1: L1Cache,
        l2: RedisCache | None,
        db: Loader,
        metrics: Metrics,
        lease_ms: int,
        ttl_ms: int = 0,
        after_load: AfterLoadHook | None = None,
    ) -> None:
        self.declaration = declaration
        self._resolved: LRUCache[str, tuple[EntryType, tuple[str, ...]]] = LRUCache(RESOLVED_NAMES)
        self.l1 = l1
        self.l2 = l2  # None: cache off, every read goes to Postgres
        self.db = db
        self.metrics = metrics
        self.lease_ms = lease_ms
        self.ttl_ms = ttl_ms
        # Test hook: runs between the Postgres read and the fill (forces stale-fill races).
        self.after_load = after_load
        self.busy_wait_budget_s = BUSY_WAIT_BUDGET_S
        self._inflight: dict[str, _Flight] = {}
        # bound once: a label lookup per request is measurable on the L1-hit path
        self._l1_hit = metrics.hits.labels("l1")
        self._l1_miss = metrics.misses.labels("l1")
        self._l2_hit = metrics.hits.labels("l2")
        self._l2_miss = metrics.misses.labels("l2")
        self._l2_fill = metrics.fills.labels("l2")
        self._l1_fill = metrics.fills.labels("l1")

    def l1_hit(self, entry: str) -> bytes | None:
        """The L1 payload of an entry, counting only hits (for the pre-routing fast path)."""
        if self.l2 is None or not self.l1.enabled:
            return None
        payload = self.l1.get(entry)
        if payload is not None:
            self._l1_hit.inc()
        return payload

    def resolve(self, entry: str) -> tuple[EntryType, tuple[str, ...]]:
        """The declared type of an entry and its tags (UndeclaredEntry if none)."""
        found = self._resolved.get(entry)
        if found is None:
            found = self._resolved[entry] = self.declaration.resolve(entry)
        return found

    async def read(self, entry: str) -> ReadResult:
        if self.l2 is None:
            loaded = await self._load(entry)
            return ReadResult(None if loaded is None else loaded.payload, "MISS")
        payload = self.l1.get(entry)
        if payload is not None:
            self._l1_hit.inc()
            return ReadResult(payload, "L1")
        self._l1_miss.inc()
        flight = self._inflight.get(entry)
        if flight is not None and flight.ticket.valid:
            self.metrics.single_flight_joins.inc()
            if flight.joined is None:
                flight.joined = asyncio.get_running_loop().create_future()
            try:
                # shield: a joiner that goes away must not cancel what the others wait for
                return await asyncio.shield(flight.joined)
            except _LoaderGone:
                return await self.read(entry)  # its loader was cancelled: load anew
        # no load in flight, or one that started before an invalidation of the entry (joining
        # it could return the pre-write value after the write's response). The load runs in
        # this request's task (a task per miss costs more than the rest of the read path);
        # readers that join it wait on a future made for them.
        ticket = self.l1.ticket(entry, self.resolve(entry)[1])
        flight = self._inflight[entry] = _Flight(ticket)
        try:
            result = await self._read_lower(entry, self.l2, ticket)
        except BaseException as exc:
            if flight.joined is not None:
                cancelled = isinstance(exc, asyncio.CancelledError)
                flight.joined.set_exception(_LoaderGone() if cancelled else exc)
            raise
        else:
            if flight.joined is not None:
                flight.joined.set_result(result)
            return result
        finally:
            if self._inflight.get(entry) is flight:
                del self._inflight[entry]

    # --- below L1 -------------------------------------------------------------------------

    async def _read_lower(self, entry: str, l2: RedisCache, ticket: Ticket) -> ReadResult:
        try:
            return await self._read_l2(entry, l2, ticket)
        finally:
            self.l1.release(ticket)

    async def _unfilled(self, entry: str) -> ReadResult:
        """Read the database and fill nothing."""
        loaded = await self._load(entry)
        return ReadResult(None if loaded is None else loaded.payload, "MISS")

    async def _read_l2(self, entry: str, l2: RedisCache, ticket: Ticket) -> ReadResult:
        tags = ticket.tags
        try:
            result = await l2.get_or_lease(entry, self.lease_ms, tags=tags)
        except RedisError:
            self.metrics.redis_errors.labels("get_or_lease").inc()
            return await self._unfilled(entry)
        if isinstance(result, Busy):
            waited = await self._wait_for_other_loader(entry, l2, tags)
            if waited is None:
                return await self._unfilled(entry)
            result = waited
        if isinstance(result, NotLive):
            self.metrics.l2_bypassed.labels("capture_not_live").inc()
            return await self._unfilled(entry)
        if isinstance(result, Refused):
            self._refused("get_or_lease", result.out_of_memory)
            return await self._unfilled(entry)
        if isinstance(result, Lease):
            self._l2_miss.inc()
            return await self._load_and_fill(entry, l2, result, ticket)
        self._l2_hit.inc()
        await self._put_l1_copy_of_l2(entry, l2, ticket, result.payload, result.rows)
        return ReadResult(result.payload, "L2")

    async def _put_l1_copy_of_l2(
        self, entry: str, l2: RedisCache, ticket: Ticket, payload: bytes, rows: tuple[str, ...]
    ) -> None:
        """With a TTL, the L1 copy expires when the L2 entry does, not a full TTL later
        (else a TTL-mode read could be stale for up to twice the TTL)."""
        if self.ttl_ms <= 0:
            self._put_l1(ticket, payload, rows=rows)
            return
        try:
            remaining_ms = await l2.remaining_ms(entry, ticket.tags)
        except RedisError:
            self.metrics.redis_errors.labels("pttl").inc()
            return
        if remaining_ms > 0:
            self._put_l1(ticket, payload, min(self.ttl_ms, remaining_ms) / 1000, rows)

    async def _wait_for_other_loader(
        self, entry: str, l2: RedisCache, tags: tuple[str, ...]
    ) -> Hit | Lease | Refused | NotLive | None:
        deadline = time.monotonic() + min(self.busy_wait_budget_s, self.lease_ms / 1000)
        backoff = FIRST_BACKOFF_S
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(backoff, left))
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            try:
                result = await l2.get_or_lease(entry, self.lease_ms, tags=tags)
            except RedisError:
                self.metrics.redis_errors.labels("get_or_lease").inc()
                break
            if not isinstance(result, Busy):
                outcome = {Hit: "hit", Lease: "lease", Refused: "refused"}.get(
                    type(result), "not_live"
                )
                self.metrics.busy_waits.labels(outcome).inc()
                return result
        self.metrics.busy_waits.labels("timeout").inc()
        return None

    async def _load_and_fill(
        self, entry: str, l2: RedisCache, lease: Lease, ticket: Ticket, first_try: bool = True
    ) -> ReadResult:
        # a load that fails or is cancelled (its reader's task: see read) gives its lease back,
        # so that nobody sits out the lease time behind it
        try:
            loaded = await self._load(entry, lease)
            if self.after_load is not None:
                await self.after_load(entry, None if loaded is None else loaded.payload)
        except BaseException:
            await self._release(entry, l2, lease, ticket.tags)
            raise
        if loaded is None:
            await self._release(entry, l2, lease, ticket.tags)
            return ReadResult(None, "MISS")
        payload = loaded.payload
        rows = self.resolve(entry)[0].row_tags(loaded.rows)
        try:
            stored = await l2.fill(
                entry,
                lease.token,
                lease.stamp,
                payload,
                self.ttl_ms,
                tags=ticket.tags,
                rows=rows,
                since=lease.since,
            )
        except OutOfMemoryError:
            self._refused("fill", out_of_memory=True)
            await self._release(entry, l2, lease, ticket.tags)  # waiters need not sit out the lease
            return ReadResult(payload, "MISS")
        except asyncio.CancelledError:
            await self._release(entry, l2, lease, ticket.tags)  # a no-op if the fill landed
            raise
        except RedisError:
            self.metrics.redis_errors.labels("fill").inc()
            return ReadResult(payload, "MISS")
        if stored == 1:
            self._l2_fill.inc()
            self._put_l1(ticket, payload, rows=rows)
            return ReadResult(payload, "MISS")
        reason = {0: "lease_lost", -2: "untracked_rows"}.get(stored, "invalidated")
        self.metrics.fills_refused.labels("l2", reason).inc()
        log.debug("fill of %s refused by the guard (%s)", entry, reason)
        if stored == -2 and first_try:
            # Rows nobody had tracked yet: their generations exist now, so a lease taken now
            # can fill (a load read before they existed cannot prove what it read was fresh)
            try:
                again = await l2.get_or_lease(entry, self.lease_ms, tags=ticket.tags)
            except RedisError:
                self.metrics.redis_errors.labels("get_or_lease").inc()
                return ReadResult(payload, "MISS")
            if isinstance(again, Lease):
                return await self._load_and_fill(entry, l2, again, ticket, first_try=False)
        return ReadResult(payload, "MISS")

    def _refused(self, op: str, out_of_memory: bool) -> None:
        """Redis would not store: the read is served from Postgres without caching."""
        reason = "redis_full" if out_of_memory else "redis_refused"
        self.metrics.fills_refused.labels("l2", reason).inc()
        log.debug("%s: %s, serving from Postgres without caching", op, reason)

    async def _release(
        self, entry: str, l2: RedisCache, lease: Lease, tags: tuple[str, ...]
    ) -> None:
        try:
            await l2.release_lease(entry, lease.token, tags=tags)
        except RedisError:
            self.metrics.redis_errors.labels("release_lease").inc()

    async def _load(self, entry: str, lease: Lease | None = None) -> Loaded | None:
        self.metrics.db_loads.inc()
        if lease is not None:  # only a leased load may read a replica (pgbust/replica.py)
            return await self.db.load_leased(entry, lease.marker)
        return await self.db.load(entry)

    def _put_l1(
        self,
        ticket: Ticket,
        payload: bytes,
        ttl_s: float | None = None,
        rows: tuple[str, ...] = (),
    ) -> None:
        if self.l1.put(ticket, payload, ttl_s, rows):
            self._l1_fill.inc()
        elif not ticket.valid:
            self.metrics.fills_refused.labels("l1", "invalidated").inc()
