"""Every epoch bump (flush of every tier) of a namespace while a scenario runs, with its reason.

A flush is announced on the namespace's invalidation channel (pgbust.lua BUMP_EPOCH and
ENSURE_SERVER publish it): a subscriber of its own, straight to the private Redis (not through
the proxies the scenarios cut), hears every one of them as long as that Redis is not restarted.
The epoch key itself is read at the start and at the end as a second witness: a bump whose
message was somehow not heard still changes it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import redis

from pgbust.keys import Keyspace
from pgbust.protocol import Invalidation, MessageError, decode_message


@dataclass
class Flushes:
    """What the watch saw: one (origin, reason) per flush message, both epoch readings."""

    heard: list[tuple[str, str]] = field(default_factory=list)
    epoch_before: int = 0
    epoch_after: int = -1  # -1: could not be read
    # the subscription broke (a scenario restarted Redis): `heard` is what came before that
    deaf_since: str = ""

    @property
    def epoch_changed(self) -> bool:
        return self.epoch_after != self.epoch_before

    def describe(self) -> list[str]:
        heard = [f"{origin}: {reason}" for origin, reason in self.heard]
        return heard + (
            [f"(flush watch deaf from then on: {self.deaf_since})"] * bool(self.deaf_since)
        )


class FlushWatch:
    """Subscribed from start() to stop(); stop() returns what it heard."""

    def __init__(self, redis_url: str, keyspace: Keyspace) -> None:
        self.keyspace = keyspace
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self.flushes = Flushes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="flush-watch", daemon=True)

    def _epoch(self) -> int:
        value = self.client.get(self.keyspace.epoch)
        return int(value) if value else 0

    def start(self) -> FlushWatch:
        self.pubsub.subscribe(self.keyspace.channel)
        # subscribed before the epoch is read: a bump after the reading is heard
        deadline = time.monotonic() + 10
        while not self.pubsub.subscribed:
            assert time.monotonic() < deadline, "the flush watch could not subscribe"
            self.pubsub.get_message(timeout=0.1)
        self.flushes.epoch_before = self._epoch()
        self._thread.start()
        return self

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.pubsub.get_message(timeout=0.1)
            except (redis.RedisError, OSError) as exc:
                self.flushes.deaf_since = repr(exc)[:200]
                return
            if message is None or message.get("type") != "message":
                continue
            try:
                decoded = decode_message(message["data"])
            except MessageError:
                self.flushes.heard.append(("?", "undecodable message (receivers flush)"))
                continue
            if isinstance(decoded, Invalidation) and decoded.flush:
                self.flushes.heard.append((decoded.origin, decoded.reason))

    def stop(self) -> Flushes:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError, OSError):
            self.flushes.epoch_after = self._epoch()
        with contextlib.suppress(redis.RedisError, OSError):
            self.pubsub.close()
        self.client.close()
        return self.flushes
