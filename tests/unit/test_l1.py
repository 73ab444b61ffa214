"""The in-process cache: LRU bounds by entries and bytes, and the L1 fill guard."""

from __future__ import annotations

from api.l1 import ENTRY_OVERHEAD, L1Cache


def _fill(l1: L1Cache, entry: str, payload: bytes) -> bool:
    return l1.put(l1.ticket(entry), payload)


def test_least_recently_used_entry_goes_first_when_the_entry_cap_is_reached() -> None:
    l1 = L1Cache(max_entries=2, max_bytes=10**6)
    _fill(l1, "product:1", b"a")
    _fill(l1, "product:2", b"b")
    assert l1.get("product:1") == b"a"  # 1 is now the most recent
    _fill(l1, "product:3", b"c")
    assert "product:2" not in l1
    assert l1.get("product:1") == b"a" and l1.get("product:3") == b"c"
    assert l1.stats.evicted_capacity == 1


def test_byte_bound_counts_key_payload_and_overhead() -> None:
    per_entry = len("product:1") + 100 + ENTRY_OVERHEAD
    l1 = L1Cache(max_entries=100, max_bytes=2 * per_entry)
    for i in range(1, 4):
        assert _fill(l1, f"product:{i}", b"x" * 100)
    assert len(l1) == 2 and l1.size_bytes == 2 * per_entry
    assert "product:1" not in l1


def test_entry_larger_than_the_byte_bound_is_not_stored() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=200)
    assert not _fill(l1, "product:1", b"x" * 500)
    assert len(l1) == 0


def test_replacing_an_entry_keeps_the_byte_count_exact() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    _fill(l1, "product:1", b"x" * 10)
    _fill(l1, "product:1", b"x" * 30)
    assert l1.size_bytes == len("product:1") + 30 + ENTRY_OVERHEAD


def test_fill_is_refused_when_its_key_was_invalidated_after_the_ticket() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    ticket = l1.ticket("product:1")  # reader starts, reads the old row ...
    l1.evict(keys=["product:1"])  # ... a writer's invalidation arrives ...
    assert not l1.put(ticket, b"old")  # ... the old row is refused
    assert l1.get("product:1") is None
    assert l1.stats.refused_fills == 1


def test_fill_is_refused_when_its_tag_was_invalidated_after_the_ticket() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    ticket = l1.ticket("category:3:summary")
    l1.evict(tags=["category:3"])
    assert not l1.put(ticket, b"old")


def test_fill_is_refused_after_a_flush() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    ticket = l1.ticket("product:1")
    l1.flush()
    assert not l1.put(ticket, b"old")


def test_invalidating_another_key_or_tag_leaves_the_ticket_valid() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    product = l1.ticket("product:1")
    page = l1.ticket("category:3:products:20:0")
    l1.evict(keys=["product:2"], tags=["category:4"])
    assert l1.put(product, b"p") and l1.put(page, b"q")


def test_a_ticket_taken_after_the_invalidation_may_fill() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    l1.evict(keys=["product:1"])
    assert _fill(l1, "product:1", b"new")
    assert l1.get("product:1") == b"new"


def test_tag_eviction_drops_every_entry_filed_under_the_tag_only() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    for entry in ("category:3:summary", "category:3:products:20:0", "category:4:summary"):
        _fill(l1, entry, b"x")
    _fill(l1, "product:3", b"x")
    assert l1.evict(tags=["category:3"]) == 2
    assert "category:4:summary" in l1 and "product:3" in l1


def test_disabled_cache_misses_and_refuses_fills_until_enabled() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    _fill(l1, "product:1", b"x")
    before = l1.ticket("product:2")
    l1.disable()
    assert l1.get("product:1") is None and len(l1) == 0
    assert not _fill(l1, "product:1", b"x")
    during = l1.ticket("product:3")
    l1.enable()
    # tickets from before or during the gap may have missed invalidations: refused
    assert not l1.put(before, b"x") and not l1.put(during, b"x")
    assert _fill(l1, "product:1", b"x")


def test_entries_expire_after_the_ttl() -> None:
    now = [100.0]
    l1 = L1Cache(max_entries=10, max_bytes=10**6, ttl_s=5.0, clock=lambda: now[0])
    _fill(l1, "product:1", b"x")
    now[0] = 104.9
    assert l1.get("product:1") == b"x"
    now[0] = 105.0
    assert l1.get("product:1") is None and len(l1) == 0


def test_in_flight_tickets_are_forgotten_once_released() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    tickets = [l1.ticket(f"product:{i}") for i in range(100)]
    for ticket in tickets:
        l1.release(ticket)
    assert not l1._pending


def test_a_per_entry_ttl_overrides_the_cache_ttl() -> None:
    now = [0.0]
    l1 = L1Cache(max_entries=10, max_bytes=10**6, ttl_s=30.0, clock=lambda: now[0])
    l1.put(l1.ticket("product:1"), b"x", ttl_s=2.0)
    now[0] = 2.0
    assert l1.get("product:1") is None
