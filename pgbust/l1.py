"""The in-process cache (L1): a pure LRU bounded by entries and bytes, with a fill guard.

A reader takes a *ticket* before it reads L2 or Postgres and may only `put` with it while the
ticket is still valid. Every eviction by key, tag or flush voids the tickets it concerns, so a
value read before an invalidation can never be stored after it (invariant 3 for L1). Tickets
are tracked only while in flight, so the bookkeeping is bounded by concurrent fills.

A ticket carries the tags its entry is filed under (from the declaration). An entry holding
rows (a page) is also filed under their row tags, known only once loaded:
`put` refuses it when one of them was evicted after the ticket was taken (evictions are
numbered; the last number of each tag is kept while tickets are in flight).

No I/O and no clock of its own beyond the injectable `clock` (used for the optional TTL).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# Bytes charged per entry on top of key and payload: dict slot, item object, list node.
ENTRY_OVERHEAD = 120
# Tag evictions remembered while tickets are in flight, before the older ones are pruned.
EVICTION_MEMORY = 4096


@dataclass(eq=False, slots=True)
class Ticket:
    """Permission to fill one entry, void once that entry is invalidated."""

    entry: str
    tags: tuple[str, ...]
    valid: bool = True
    seq: int = 0  # evictions numbered up to here happened before the ticket


@dataclass(slots=True)
class _Item:
    payload: bytes
    size: int
    expires_at: float  # 0 = never
    filed: tuple[str, ...] = ()  # its tags, then its row tags


@dataclass(slots=True)
class L1Stats:
    hits: int = 0
    misses: int = 0
    fills: int = 0
    refused_fills: int = 0
    evicted_capacity: int = 0
    evicted_invalidation: int = 0
    evicted_expired: int = 0
    flushes: int = 0


@dataclass(slots=True)
class L1Cache:
    max_entries: int
    max_bytes: int
    ttl_s: float = 0.0
    clock: Callable[[], float] = time.monotonic
    stats: L1Stats = field(default_factory=L1Stats)
    enabled: bool = True
    _items: OrderedDict[str, _Item] = field(default_factory=OrderedDict)
    _by_tag: dict[str, set[str]] = field(default_factory=dict)
    _pending: dict[str, set[Ticket]] = field(default_factory=dict)
    _bytes: int = 0
    _seq: int = 0  # number of the last eviction by tag
    _evicted_at: dict[str, int] = field(default_factory=dict)  # tag -> its last eviction

    # --- reads ----------------------------------------------------------------------------

    def get(self, entry: str) -> bytes | None:
        item = self._items.get(entry) if self.enabled else None
        if item is None:
            self.stats.misses += 1
            return None
        if item.expires_at and item.expires_at <= self.clock():
            self._remove(entry)
            self.stats.evicted_expired += 1
            self.stats.misses += 1
            return None
        self._items.move_to_end(entry)
        self.stats.hits += 1
        return item.payload

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, entry: str) -> bool:
        return entry in self._items

    @property
    def size_bytes(self) -> int:
        return self._bytes

    # --- guarded fills --------------------------------------------------------------------

    def ticket(self, entry: str, tags: tuple[str, ...]) -> Ticket:
        """Take before reading the lower tiers; a disabled L1 hands out void tickets.

        tags: the tags the entry is filed under (an eviction of one voids the ticket)."""
        ticket = Ticket(entry, tags, valid=self.enabled, seq=self._seq)
        if ticket.valid:
            self._pending.setdefault(entry, set()).add(ticket)
        return ticket

    def put(
        self,
        ticket: Ticket,
        payload: bytes,
        ttl_s: float | None = None,
        rows: tuple[str, ...] = (),
    ) -> bool:
        """Store payload unless the entry was invalidated since the ticket was taken.

        ttl_s overrides the cache's TTL for this entry (a copy of an L2 entry lives no longer
        than the L2 entry itself); rows: the row tags of what the payload holds."""
        evicted_at = self._evicted_at
        if rows and any(evicted_at.get(row, -1) > ticket.seq for row in rows):
            ticket.valid = False  # before release: the last release forgets the numbers
        self.release(ticket)
        if not ticket.valid or not self.enabled:
            self.stats.refused_fills += 1
            return False
        size = len(ticket.entry) + len(payload) + ENTRY_OVERHEAD
        if self.max_entries == 0 or size > self.max_bytes:
            return False
        if ticket.entry in self._items:
            self._remove(ticket.entry)
        ttl = self.ttl_s if ttl_s is None else ttl_s
        expires_at = self.clock() + ttl if ttl > 0 else 0.0
        filed = ticket.tags + rows if rows else ticket.tags
        self._items[ticket.entry] = _Item(payload, size, expires_at, filed)
        self._bytes += size
        for tag in filed:
            self._by_tag.setdefault(tag, set()).add(ticket.entry)
        self.stats.fills += 1
        while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._items))
            self._remove(oldest)
            self.stats.evicted_capacity += 1
        return True

    def release(self, ticket: Ticket) -> None:
        """Forget an in-flight ticket (after put, or when the reader gives up)."""
        waiting = self._pending.get(ticket.entry)
        if waiting is not None:
            waiting.discard(ticket)
            if not waiting:
                del self._pending[ticket.entry]
        if not self._pending:
            self._evicted_at.clear()  # no ticket left that could be older

    # --- invalidation ---------------------------------------------------------------------

    def evict(self, keys: Iterable[str] = (), tags: Iterable[str] = ()) -> int:
        """Drop entries by name and by tag; void in-flight tickets for them. Returns drops."""
        dropped = 0
        for entry in keys:
            self._void(self._pending.get(entry, ()))
            if entry in self._items:
                self._remove(entry)
                dropped += 1
        tag_set = set(tags)
        if tag_set:
            if self._pending:
                self._seq += 1
                for tag in tag_set:
                    self._evicted_at[tag] = self._seq
                if len(self._evicted_at) > EVICTION_MEMORY:
                    self._forget_evictions()
            for waiting in self._pending.values():
                for ticket in waiting:
                    if not tag_set.isdisjoint(ticket.tags):
                        ticket.valid = False
            for tag in tag_set:
                for entry in list(self._by_tag.get(tag, ())):
                    self._remove(entry)
                    dropped += 1
        self.stats.evicted_invalidation += dropped
        return dropped

    def flush(self) -> int:
        """Drop everything and void every in-flight ticket."""
        dropped = len(self._items)
        for waiting in self._pending.values():
            self._void(waiting)
        self._pending.clear()
        self._items.clear()
        self._by_tag.clear()
        self._evicted_at.clear()  # every ticket is void
        self._bytes = 0
        self.stats.flushes += 1
        self.stats.evicted_invalidation += dropped
        return dropped

    def disable(self) -> None:
        """Flush and bypass: reads miss and fills are refused until `enable`."""
        self.enabled = False
        self.flush()

    def enable(self) -> None:
        self.enabled = True

    # --- internals ------------------------------------------------------------------------

    def _forget_evictions(self) -> None:
        """Drop the numbers no ticket in flight can be older than (bounded bookkeeping)."""
        oldest = min(t.seq for waiting in self._pending.values() for t in waiting)
        self._evicted_at = {tag: n for tag, n in self._evicted_at.items() if n > oldest}

    @staticmethod
    def _void(tickets: Iterable[Ticket]) -> None:
        for ticket in tickets:
            ticket.valid = False

    def _remove(self, entry: str) -> None:
        item = self._items.pop(entry)
        self._bytes -= item.size
        for filed in item.filed:
            members = self._by_tag.get(filed)
            if members is not None:
                members.discard(entry)
                if not members:
                    del self._by_tag[filed]
