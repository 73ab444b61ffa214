"""What the subscriber does with each message it receives (no Redis needed)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from pgbust.l1 import L1Cache
from pgbust.metrics import Metrics
from pgbust.protocol import Heartbeat, Invalidation, Targets, flush_message
from pgbust.subscriber import ChannelSilent, Subscriber
from tests.support.demo import demo_tags


def _subscriber_with(*entries: str) -> tuple[Subscriber, L1Cache]:
    l1 = L1Cache(max_entries=100, max_bytes=10**6)
    for entry in entries:
        l1.put(l1.ticket(entry, demo_tags(entry)), b"x")
    return Subscriber(cast(Any, None), cast(Any, None), l1, Metrics(l1)), l1


def test_message_evicts_its_keys_and_tags_only() -> None:
    sub, l1 = _subscriber_with("product:1", "product:2", "category:3:summary", "category:4:summary")
    targets = Targets(frozenset({"product:1"}), frozenset({"category:3:summary"}))
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
    ticket = l1.ticket("product:9", demo_tags("product:9"))
    sub.handle(Invalidation(keys=("product:9",)).encode())
    assert not l1.put(ticket, b"old")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _subscribed(silence_s: float = 2.0) -> tuple[Subscriber, L1Cache, Clock]:
    """A subscriber whose subscription was just confirmed (no Redis: only the rules)."""
    clock = Clock()
    l1 = L1Cache(max_entries=100, max_bytes=10**6)
    sub = Subscriber(cast(Any, None), cast(Any, None), l1, Metrics(l1), silence_s=silence_s,
                     clock=clock)  # fmt: skip
    l1.disable()
    sub.state = "subscribed"
    return sub, l1, clock


def _fill(l1: L1Cache, entry: str) -> bool:
    return l1.put(l1.ticket(entry, demo_tags(entry)), b"x")


BEAT = Heartbeat(every_ms=500, sender="inv").encode()


def test_l1_serves_only_once_a_heartbeat_proves_an_active_invalidator() -> None:
    sub, l1, _ = _subscribed()
    assert not _fill(l1, "product:1")  # subscribed, but nobody proves capture yet
    sub.handle(BEAT)
    assert sub.capture_live and sub.caching.is_set()
    assert _fill(l1, "product:1")


def test_no_heartbeat_for_the_silence_bound_flushes_and_bypasses_l1() -> None:
    sub, l1, clock = _subscribed(silence_s=2.0)
    sub.handle(BEAT)
    _fill(l1, "product:1")
    clock.now += 1.9
    sub._heard_at = clock.now  # PONGs keep arriving: the connection itself is fine
    sub.check(clock.now)
    assert sub.capture_live and len(l1) == 1
    clock.now += 0.2
    sub._heard_at = clock.now
    sub.check(clock.now)  # no heartbeat for 2.1 s: no active invalidator proves anything
    assert not sub.capture_live and not l1.enabled and len(l1) == 0
    assert sub.healthy  # the subscription is fine: health says so, and why L1 is off
    assert "no heartbeat" in sub.describe()["capture"]
    sub.handle(BEAT)
    assert sub.capture_live and l1.enabled


def test_a_subscription_that_hears_nothing_at_all_for_the_bound_is_lost() -> None:
    sub, _, clock = _subscribed(silence_s=2.0)
    sub._heard_at = clock.now
    clock.now += 2.1
    with pytest.raises(ChannelSilent):
        sub.check(clock.now)
