"""Invalidation lag (pure, no I/O): commit acknowledged -> invalidation received.

A subscriber on the invalidation channel stamps every message when it arrives. The message
is published after the entries were deleted from Redis (L2), and every API instance evicts its
L1 when it receives the same message, so its arrival is the moment the written entry was gone
from every tier. For each write we look for the first message that covers the product's entry
(its key, or a flush) and arrived after the write was *sent* (nothing earlier can be about it);
its lag is arrival - acknowledgement, and 0 when the entry was gone before the writer even
heard back (the API invalidates before it answers, so API writes usually score 0).

Every time is in seconds on one clock (time.time() in every process of the run).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Write:
    product_id: int
    version: int
    sent_at: float
    acked_at: float
    oob: bool


@dataclass(frozen=True, slots=True)
class Received:
    """One invalidation message as the subscriber saw it."""

    at: float
    keys: tuple[str, ...]
    flush: bool = False
    ts_us: int | None = None
    origin: str = ""


class LagTracker:
    def __init__(self, messages: Iterable[Received]) -> None:
        self._by_key: dict[str, list[float]] = {}
        self._flushes: list[float] = []
        for message in sorted(messages, key=lambda m: m.at):
            if message.flush:
                self._flushes.append(message.at)
            for key in message.keys:
                self._by_key.setdefault(key, []).append(message.at)

    def gone_at(self, entry: str, after: float) -> float | None:
        """When the first message covering `entry` arrived at or after `after` (None: never)."""
        candidates = []
        for times in (self._by_key.get(entry, []), self._flushes):
            index = bisect_left(times, after)
            if index < len(times):
                candidates.append(times[index])
        return min(candidates) if candidates else None

    def lag_s(self, write: Write) -> float | None:
        """Seconds from the write's acknowledgement until its entry was gone (None: never)."""
        gone = self.gone_at(f"product:{write.product_id}", write.sent_at)
        if gone is None:
            return None
        return max(0.0, gone - write.acked_at)


def message_lags_ms(messages: Iterable[Received]) -> list[float]:
    """Change time in the trigger (ts_us) -> message received, for change-capture messages."""
    return [
        max(0.0, (m.at - m.ts_us / 1e6) * 1000.0)
        for m in messages
        if m.ts_us is not None and m.origin == "cdc"
    ]
