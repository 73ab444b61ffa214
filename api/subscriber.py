"""The invalidation subscriber: evicts from this process's L1 what others invalidated.

Redis pub/sub is at-most-once, so the subscriber never carries on after a gap: when its
connection drops the L1 is flushed and bypassed (reads go to Redis) until it has subscribed
again, and an undecodable message or an epoch change flushes it too. The pub/sub client is
built without redis-py's silent reconnect (which would resubscribe behind our back and hide
the messages lost meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from api.l1 import L1Cache
from api.metrics import Metrics
from pgbust.protocol import Invalidation, MessageError
from pgbust.redis_cache import RedisCache

log = logging.getLogger(__name__)

State = Literal["starting", "subscribed", "disconnected", "stopped"]
EPOCH_CHECK_S = 1.0
FIRST_RETRY_S = 0.05
MAX_RETRY_S = 2.0


def pubsub_client(redis_url: str) -> aioredis.Redis:
    """A Redis client whose connection errors surface instead of being retried silently."""
    return aioredis.Redis.from_url(
        redis_url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=2.0,
        health_check_interval=0,
    )


class Subscriber:
    def __init__(
        self, client: aioredis.Redis, cache: RedisCache, l1: L1Cache, metrics: Metrics
    ) -> None:
        self.client = client
        self.cache = cache
        self.l1 = l1
        self.metrics = metrics
        self.state: State = "starting"
        self.reconnects = 0
        self.last_error = ""
        self.subscribed_once = asyncio.Event()
        self._epoch: int | None = None
        self._echoes: dict[str, asyncio.Future[None]] = {}

    @property
    def healthy(self) -> bool:
        return self.state == "subscribed"

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "l1_enabled": self.l1.enabled,
        }

    async def run(self) -> None:
        """Subscribe, consume, and on any connection error flush, back off and resubscribe."""
        self.l1.disable()
        failures = 0
        try:
            while True:
                try:
                    await self._session()
                except (RedisError, OSError) as exc:
                    failures = 0 if self.state == "subscribed" else failures + 1
                    self._on_lost(exc)
                except Exception as exc:  # a bug must not leave the L1 unguarded: same path
                    log.exception("subscriber session failed unexpectedly")
                    failures += 1
                    self._on_lost(exc)
                delay = min(MAX_RETRY_S, FIRST_RETRY_S * 2**failures)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        finally:
            self.state = "stopped"
            self.metrics.subscriber_connected.set(0)
            self.l1.disable()

    def _on_lost(self, exc: BaseException) -> None:
        was_subscribed = self.state == "subscribed"
        self.state = "disconnected"
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        self.metrics.subscriber_connected.set(0)
        self.l1.disable()
        if was_subscribed:
            log.warning("invalidation channel lost (%s): L1 flushed and bypassed", exc)

    async def _session(self) -> None:
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.cache.keyspace.channel)
            # wait for the confirmation: from here on no message can be missed
            while await pubsub.get_message(timeout=1.0) is None:
                pass
            await self.cache.ensure_server_identity("api")
            self._epoch = await self.cache.current_epoch()
            # anything filled before the subscription may have missed an invalidation
            self.l1.flush()
            self.l1.enable()
            if self.subscribed_once.is_set():
                self.reconnects += 1
                self.metrics.subscriber_reconnects.inc()
                log.info("resubscribed to %s", self.cache.keyspace.channel)
            self.state = "subscribed"
            self.last_error = ""
            self.metrics.subscriber_connected.set(1)
            self.subscribed_once.set()
            await self._consume(pubsub)
        finally:
            # aclose after a dead connection may itself fail; the session is over anyway
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _consume(self, pubsub: Any) -> None:
        next_epoch_check = time.monotonic() + EPOCH_CHECK_S
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            is_message = message is not None and message.get("type") == "message"
            if is_message and self.handle(message["data"]):
                # that flush announced its bump: the check below is for bumps nobody
                # announced, not for a second flush of the same one a moment later
                self._epoch = await self.cache.current_epoch()
            if time.monotonic() >= next_epoch_check:
                next_epoch_check = time.monotonic() + EPOCH_CHECK_S
                await self._check_epoch()

    async def _check_epoch(self) -> None:
        """Belt and braces: an epoch bump whose flush message we did not see flushes L1."""
        epoch = await self.cache.current_epoch()
        if epoch != self._epoch:
            log.info("epoch changed %s -> %s: flushing L1", self._epoch, epoch)
            self._epoch = epoch
            self.l1.flush()
            self.metrics.messages.labels("epoch_check").inc()

    def expect_echo(self, reason: str) -> asyncio.Future[None]:
        """A future resolved when a message with this reason comes back on the channel."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._echoes[reason] = future
        return future

    def forget_echo(self, reason: str) -> None:
        self._echoes.pop(reason, None)

    def handle(self, raw: bytes | str) -> bool:
        """Apply one message to L1; True when it flushed the whole L1."""
        try:
            message = Invalidation.decode(raw)
        except MessageError as exc:
            log.warning("undecodable invalidation message (%s): flushing L1", exc)
            self.metrics.messages.labels("undecodable").inc()
            self.l1.flush()
            return True
        if message.flush:
            self.metrics.messages.labels("flush").inc()
            self.l1.flush()
        else:
            self.metrics.messages.labels("evict").inc()
            self.l1.evict(message.keys, message.tags)
        echo = self._echoes.pop(message.reason, None) if message.reason else None
        if echo is not None and not echo.done():
            echo.set_result(None)
        if message.ts_us is not None:
            lag_s = time.time() - message.ts_us / 1_000_000
            self.metrics.invalidation_lag.observe(max(0.0, lag_s))
        return message.flush
