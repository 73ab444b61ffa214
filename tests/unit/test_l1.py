"""The in-process cache: LRU bounds by entries and bytes, and the L1 fill guard."""

from __future__ import annotations

from pgbust.l1 import ENTRY_OVERHEAD, EVICTION_MEMORY, L1Cache
from tests.support.demo import demo_tags


def _fill(l1: L1Cache, entry: str, payload: bytes) -> bool:
    return l1.put(l1.ticket(entry, demo_tags(entry)), payload)


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
    ticket = l1.ticket("product:1", demo_tags("product:1"))  # reader starts, reads the old row ...
    l1.evict(keys=["product:1"])  # ... a writer's invalidation arrives ...
    assert not l1.put(ticket, b"old")  # ... the old row is refused
    assert l1.get("product:1") is None
    assert l1.stats.refused_fills == 1


def test_fill_is_refused_when_its_tag_was_invalidated_after_the_ticket() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    ticket = l1.ticket("category:3:summary", demo_tags("category:3:summary"))
    l1.evict(tags=["category:3:summary"])
    assert not l1.put(ticket, b"old")


def test_fill_is_refused_after_a_flush() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    ticket = l1.ticket("product:1", demo_tags("product:1"))
    l1.flush()
    assert not l1.put(ticket, b"old")


def test_invalidating_another_key_or_tag_leaves_the_ticket_valid() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    product = l1.ticket("product:1", demo_tags("product:1"))
    page = l1.ticket("category:3:products:20:0", demo_tags("category:3:products:20:0"))
    l1.evict(keys=["product:2"], tags=["category:4:pages"])
    assert l1.put(product, b"p") and l1.put(page, b"q")


def test_a_ticket_taken_after_the_invalidation_may_fill() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    l1.evict(keys=["product:1"])
    assert _fill(l1, "product:1", b"new")
    assert l1.get("product:1") == b"new"


def test_tag_eviction_drops_every_entry_filed_under_the_tag_only() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    for entry in ("category:3:products:20:0", "category:3:products:20:20", "category:4:summary"):
        _fill(l1, entry, b"x")
    _fill(l1, "product:3", b"x")
    _fill(l1, "category:3:summary", b"x")
    assert l1.evict(tags=["category:3:pages"]) == 2
    assert "category:4:summary" in l1 and "product:3" in l1


def test_disabled_cache_misses_and_refuses_fills_until_enabled() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    _fill(l1, "product:1", b"x")
    before = l1.ticket("product:2", demo_tags("product:2"))
    l1.disable()
    assert l1.get("product:1") is None and len(l1) == 0
    assert not _fill(l1, "product:1", b"x")
    during = l1.ticket("product:3", demo_tags("product:3"))
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
    tickets = [l1.ticket(f"product:{i}", demo_tags(f"product:{i}")) for i in range(100)]
    for ticket in tickets:
        l1.release(ticket)
    assert not l1._pending


def test_a_per_entry_ttl_overrides_the_cache_ttl() -> None:
    now = [0.0]
    l1 = L1Cache(max_entries=10, max_bytes=10**6, ttl_s=30.0, clock=lambda: now[0])
    l1.put(l1.ticket("product:1", demo_tags("product:1")), b"x", ttl_s=2.0)
    now[0] = 2.0
    assert l1.get("product:1") is None


# --- pages are filed under the row tags of what they hold -------------------------------------


def test_a_row_tag_evicts_the_pages_that_hold_the_row_only() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    assert l1.put(
        l1.ticket("category:3:products:20:0", demo_tags("category:3:products:20:0")),
        b"[1,2]",
        rows=("row:products:1",),
    )
    assert l1.put(
        l1.ticket("category:3:products:20:20", demo_tags("category:3:products:20:20")),
        b"[3]",
        rows=("row:products:3",),
    )
    assert l1.evict(keys=["product:1"], tags=["row:products:1"]) == 1
    assert "category:3:products:20:0" not in l1 and "category:3:products:20:20" in l1
    # removing an entry unfiles it from every tag: nothing dangles
    assert l1.evict(tags=["category:3:pages"]) == 1
    assert l1._by_tag == {}


def test_fill_is_refused_when_a_row_it_holds_was_evicted_after_the_ticket() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    ticket = l1.ticket("category:3:products:20:0", demo_tags("category:3:products:20:0"))
    other = l1.ticket(
        "product:8", demo_tags("product:8")
    )  # another read in flight keeps the numbers
    l1.evict(tags=["row:products:2"])  # the page's rows are only known once loaded
    assert not l1.put(ticket, b"old", rows=("row:products:1", "row:products:2"))
    assert l1.put(other, b"p")
    # a ticket taken after the eviction may fill
    assert l1.put(
        l1.ticket("category:3:products:20:0", demo_tags("category:3:products:20:0")),
        b"new",
        rows=("row:products:2",),
    )


def test_the_last_ticket_in_flight_still_sees_the_evictions_before_it_is_released() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    ticket = l1.ticket("category:3:products:20:0", demo_tags("category:3:products:20:0"))
    l1.evict(tags=["row:products:2"])
    assert not l1.put(ticket, b"old", rows=("row:products:2",))
    assert l1._evicted_at == {}  # forgotten once no ticket is in flight


def test_eviction_numbers_stay_bounded_while_reads_are_always_in_flight() -> None:
    l1 = L1Cache(max_entries=10, max_bytes=10**6)
    old = l1.ticket("category:1:products:20:0", demo_tags("category:1:products:20:0"))
    for n in range(3 * EVICTION_MEMORY):
        newer = l1.ticket(f"product:{n}", demo_tags(f"product:{n}"))  # always one read in flight
        l1.evict(tags=[f"row:products:{n}"])
        l1.release(old)
        old = newer
    assert len(l1._evicted_at) <= EVICTION_MEMORY + 1
    stale = l1.ticket("category:2:products:20:0", demo_tags("category:2:products:20:0"))
    l1.evict(tags=["row:products:1"])
    assert not l1.put(stale, b"old", rows=("row:products:1",))
