"""What the subscriber does with each message it receives (no Redis needed)."""

from __future__ import annotations

from typing import Any, cast

from api.l1 import L1Cache
from api.metrics import Metrics
from api.subscriber import Subscriber
from pgbust.protocol import Invalidation, Targets, flush_message


def _subscriber_with(*entries: str) -> tuple[Subscriber, L1Cache]:
    l1 = L1Cache(max_entries=100, max_bytes=10**6)
    for entry in entries:
        l1.put(l1.ticket(entry), b"x")
    return Subscriber(cast(Any, None), cast(Any, None), l1, Metrics(l1)), l1


def test_message_evicts_its_keys_and_tags_only() -> None:
    sub, l1 = _subscriber_with("product:1", "product:2", "category:3:summary", "category:4:summary")
    targets = Targets(frozenset({"product:1"}), frozenset({"category:3"}))
    sub.handle(Invalidation.of(targets, origin="cdc", ts_us=1).encode())
    assert set(l1._items) == {"product:2", "category:4:summary"}


def test_flush_message_empties_l1() -> None:
    sub, l1 = _subscriber_with("product:1", "category:3:summary")
    sub.handle(flush_message("test", "cdc").encode())
    assert len(l1) == 0


def test_undecodable_message_flushes_l1() -> None:
    sub, l1 = _subscriber_with("product:1")
    sub.handle(b"\xff not json")
    assert len(l1) == 0
    sub2, l1b = _subscriber_with("product:1")
    sub2.handle(b'{"v": 99, "k": ["product:2"]}')
    assert len(l1b) == 0


def test_message_voids_in_flight_fills_of_its_keys() -> None:
    sub, l1 = _subscriber_with()
    ticket = l1.ticket("product:9")
    sub.handle(Invalidation(keys=("product:9",)).encode())
    assert not l1.put(ticket, b"old")
