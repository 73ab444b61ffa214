"""Plays the active invalidator's liveness beat, for tests that invalidate by themselves.

An API in cdc mode serves its caches only while an active invalidator proves its capture
channels alive (the liveness key and the heartbeat on the channel, DESIGN invariant 8). A test
that runs no invalidator and sends every invalidation itself (a RedisCache.invalidate call, a
PUBLISH) is the invalidator, so it beats: with the very script and message the daemon uses.
"""

from __future__ import annotations

import contextlib
import threading

import redis

from pgbust import lua
from pgbust.keys import Keyspace
from pgbust.protocol import Heartbeat


class HeartbeatPlayer:
    def __init__(self, redis_url: str, keyspace: Keyspace, every_s: float = 0.1) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=2)
        self.keyspace = keyspace
        self.every_s = every_s
        self.beats = 0
        self._script = self.client.register_script(lua.HEARTBEAT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat-player")

    def beat(self) -> None:
        message = Heartbeat(round(self.every_s * 1000), sender="test").encode()
        ks = self.keyspace
        valid_ms = round(self.every_s * 10_000)
        self._script(keys=[ks.capture_alive], args=["test", valid_ms, ks.channel, message])
        self.beats += 1

    def start(self) -> HeartbeatPlayer:
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and take the liveness key away (capture no longer live)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):  # a test may have stopped Redis
            self.client.delete(self.keyspace.capture_alive)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(redis.RedisError):  # a test stopped Redis: beat on
                self.beat()
