"""The invalidation subscriber: evicts from this process's L1 what others invalidated.

Redis pub/sub is at-most-once, so the subscriber never carries on after a gap: when its
connection drops the L1 is flushed and bypassed (reads go to Redis) until it has subscribed
again, and an undecodable message or an epoch change flushes it too. The pub/sub client is
built without redis-py's silent reconnect (which would resubscribe behind our back and hide
the messages lost meanwhile).

Silence is not news (DESIGN invariant 8). A connection can go silent without ever closing (a
proxy whose upstream died, an expired NAT entry): no FIN, no RST, TCP keepalives answered by
a middlebox. So the subscriber PINGs its own connection and requires *some* message — a PONG,
a heartbeat, an invalidation — at least every `silence_s`; past that the connection counts as
lost (torn down, L1 flushed and bypassed, resubscribe). And L1 serves only while the active
invalidator's heartbeats arrive: a live connection that hears PONGs but no heartbeat for
`silence_s` means no active invalidator is proving its capture channels (none running, or
one cut off from Postgres or Redis), so L1 is flushed and bypassed until a heartbeat comes.

On a Redis Cluster (keyspace.cluster) the channel is a sharded one: the invalidator
SPUBLISHes, and the subscriber SSUBSCRIBEs on the master that serves the channel's slot,
found afresh for every session. redis-py's ClusterPubSub is not used: it reconnects, and
moves a shard channel to its slot's new owner, by itself (`_resubscribe_shard_channels`,
`reinitialize_shard_subscriptions`): a gap nobody would see. Here the connection to the
shard's master is a plain one without retries, so every gap on the shard surfaces: the master
dies or is failed over (the connection drops or goes silent), the node is demoted or the slot
moves away (the server ends the subscription with an `sunsubscribe`). Each is a lost channel
like any other: L1 flushed and bypassed until subscribed again, on the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from pgbust.l1 import L1Cache
from pgbust.metrics import Metrics
from pgbust.protocol import Heartbeat, MessageError, decode_message
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import cluster_client, shard_address

log = logging.getLogger(__name__)

State = Literal["starting", "subscribed", "disconnected", "stopped"]
EPOCH_CHECK_S = 1.0
FIRST_RETRY_S = 0.05
MAX_RETRY_S = 2.0
DEFAULT_SILENCE_S = 2.0
CLIENT_NAME = "pgbust-api-subscriber"  # in CLIENT LIST, and what fault-injection tests match
_CLOSE_TIMEOUT_S = 2.0


class ChannelSilent(RedisConnectionError):
    """The subscription heard nothing at all (not even its own PING) within the bound."""


class ChannelEnded(RedisConnectionError):
    """The server ended the subscription itself (on a cluster: the channel's slot moved to
    another node, or the node stopped being a master)."""


def pubsub_client(redis_url: str, *, cluster: bool = False) -> aioredis.Redis:
    """A Redis client whose connection errors surface instead of being retried silently.

    cluster: a cluster client, used only to find the shard of the channel; the subscription
    itself runs on a plain connection to that shard's master (`node_client`)."""
    if cluster:
        return cluster_client(redis_url, socket_connect_timeout=2.0, client_name=CLIENT_NAME)
    return aioredis.Redis.from_url(
        redis_url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=2.0,
        health_check_interval=0,
        client_name=CLIENT_NAME,
    )


def node_client(host: str, port: int) -> aioredis.Redis:
    """A connection to one node of a cluster, without silent retries (as `pubsub_client`)."""
    return aioredis.Redis(
        host=host,
        port=port,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=2.0,
        health_check_interval=0,
        client_name=CLIENT_NAME,
    )


class Subscriber:
    def __init__(
        self,
        client: aioredis.Redis,
        cache: RedisCache,
        l1: L1Cache,
        metrics: Metrics,
        *,
        silence_s: float = DEFAULT_SILENCE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.cache = cache
        self.l1 = l1
        self.metrics = metrics
        self.silence_s = silence_s
        self.clock = clock
        self.state: State = "starting"
        self.reconnects = 0
        self.last_error = ""
        self.shard = ""  # on a cluster: the master the subscription runs on
        self.subscribed_once = asyncio.Event()
        self.caching = asyncio.Event()  # set while L1 serves: subscribed and heartbeats arrive
        self.capture_live = False
        self.last_beat: Heartbeat | None = None
        self._heard_at = clock()  # anything at all on the current connection
        self._beat_at: float | None = None  # the last heartbeat on the current connection
        self._warned_cadence = False
        self._epoch: int | None = None
        self._echoes: dict[str, asyncio.Future[None]] = {}

    @property
    def healthy(self) -> bool:
        """The subscription itself is proven alive (a missing invalidator is reported, not
        failed: every instance would go 503 at once, while reads stay correct uncached)."""
        return self.state == "subscribed"

    def describe(self) -> dict[str, Any]:
        now = self.clock()
        beat_age = None if self._beat_at is None else round(now - self._beat_at, 2)
        if self.capture_live:
            capture = "live"
        elif self.state != "subscribed":
            capture = "unknown: not subscribed"
        elif beat_age is None:
            capture = "no heartbeat from an active invalidator yet"
        else:
            capture = f"no heartbeat from an active invalidator for {beat_age} s"
        return {
            "state": self.state,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "l1_enabled": self.l1.enabled,
            "capture": capture,
            "heartbeat_age_s": beat_age,
            "heard_s_ago": round(now - self._heard_at, 2),
            "silence_s": self.silence_s,
            "invalidator": self.last_beat.sender if self.last_beat else "",
            **({"shard": self.shard} if self.shard else {}),
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
            self._stop_caching()

    def _on_lost(self, exc: BaseException) -> None:
        was_subscribed = self.state == "subscribed"
        self.state = "disconnected"
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        self.metrics.subscriber_connected.set(0)
        self._stop_caching()
        self._beat_at = None  # the next connection must hear a heartbeat of its own
        if isinstance(exc, ChannelSilent):
            self.metrics.subscriber_silences.labels("connection").inc()
        if was_subscribed:
            log.warning("invalidation channel lost (%s): L1 flushed and bypassed", exc)

    async def _subscribe(self) -> tuple[Any, aioredis.Redis | None]:
        """A pub/sub connection subscribed to the channel (the confirmation not yet read), and
        the node client to close with it on a cluster."""
        channel = self.cache.keyspace.channel
        if not self.cache.keyspace.cluster:
            pubsub = self.client.pubsub()
            await pubsub.subscribe(channel)
            return pubsub, None
        async with asyncio.timeout(self.silence_s):
            host, port = await shard_address(self.client, channel)
        node = node_client(host, port)
        pubsub = node.pubsub()
        try:
            await pubsub.ssubscribe(channel)
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await node.aclose()
            raise
        self.shard = f"{host}:{port}"
        return pubsub, node

    async def _session(self) -> None:
        pubsub, node = await self._subscribe()
        try:
            await self._confirmed(pubsub)
            await self.cache.ensure_server_identity("api")
            self._epoch = await self.cache.current_epoch()
            # anything filled before the subscription may have missed an invalidation; L1
            # serves again once a heartbeat proves an active invalidator is behind the channel
            self.l1.flush()
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
            # aclose after a dead connection may itself fail (or, black-holed, hang)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await pubsub.aclose()
                    if node is not None:
                        await node.aclose()

    async def _confirmed(self, pubsub: Any) -> None:
        """Wait for the subscription's confirmation: from then on no message can be missed."""
        started = self.clock()
        while await pubsub.get_message(timeout=self._tick_s) is None:
            if self.clock() - started > self.silence_s:
                raise ChannelSilent(f"no subscription confirmation within {self.silence_s} s")
        self._heard_at = self.clock()

    @property
    def _tick_s(self) -> float:
        return min(0.25, self.silence_s / 4)

    async def _consume(self, pubsub: Any) -> None:
        ping_every = self.silence_s / 4
        now = self.clock()
        next_ping = now + ping_every
        next_epoch_check = now + EPOCH_CHECK_S
        while True:
            message = await pubsub.get_message(timeout=self._tick_s)
            now = self.clock()
            if message is not None:
                self._heard_at = now
                kind = message.get("type")
                if kind in ("unsubscribe", "sunsubscribe"):  # not ours: nobody unsubscribes
                    raise ChannelEnded(f"the server ended the subscription ({kind})")
                if kind in ("message", "smessage") and self.handle(message["data"]):
                    # that flush announced its bump: the epoch check below is for bumps
                    # nobody announced, not for a second flush of the same one a moment later
                    await self._record_epoch()
            if now >= next_ping:
                next_ping = now + ping_every
                await pubsub.ping()  # its PONG is a message too: proof the connection works
            self.check(now)
            if now >= next_epoch_check:
                next_epoch_check = now + EPOCH_CHECK_S
                try:  # on the cache's own connection, which may be the silent one
                    async with asyncio.timeout(self.silence_s):
                        await self._check_epoch()
                except TimeoutError:
                    raise ChannelSilent(f"no epoch within {self.silence_s} s") from None

    def check(self, now: float) -> None:
        """Apply the silence bounds: raise ChannelSilent when the connection heard nothing;
        stop or resume L1 as heartbeats stop or resume."""
        heard_s_ago = now - self._heard_at
        if heard_s_ago > self.silence_s:
            raise ChannelSilent(
                f"nothing heard on the subscription for {heard_s_ago:.1f} s "
                f"(PGBUST_SUBSCRIBER_SILENCE_S={self.silence_s})"
            )
        beating = self._beat_at is not None and now - self._beat_at <= self.silence_s
        if self.capture_live and not beating:
            self.metrics.subscriber_silences.labels("heartbeat").inc()
            log.warning(
                "no heartbeat from an active invalidator for %.1f s: L1 flushed and bypassed, "
                "and Redis serves no reads until one proves its capture channels again",
                self.silence_s,
            )
            self._stop_caching()

    async def _record_epoch(self) -> None:
        """After a flush message: the epoch it announced, so that the check does not flush
        L1 a second time for the same bump (bounded: the cache's connection may be silent)."""
        try:
            async with asyncio.timeout(self.silence_s):
                self._epoch = await self.cache.current_epoch()
        except TimeoutError:
            raise ChannelSilent(f"no epoch within {self.silence_s} s") from None

    async def _check_epoch(self) -> None:
        """Belt and braces: an epoch bump whose flush message we did not see flushes L1."""
        epoch = await self.cache.current_epoch()
        if epoch != self._epoch:
            log.info("epoch changed %s -> %s: flushing L1", self._epoch, epoch)
            self._epoch = epoch
            self.l1.flush()
            self.metrics.messages.labels("epoch_check").inc()

    # --- L1 on / off --------------------------------------------------------------------------

    def _start_caching(self) -> None:
        self.l1.flush()
        self.l1.enable()
        self.capture_live = True
        self.metrics.capture_live.set(1)
        self.caching.set()

    def _stop_caching(self) -> None:
        self.l1.disable()
        self.capture_live = False
        self.metrics.capture_live.set(0)
        self.caching.clear()

    def _on_heartbeat(self, beat: Heartbeat) -> None:
        self.metrics.messages.labels("heartbeat").inc()
        self._beat_at = self.clock()
        self.last_beat = beat
        if not self._warned_cadence and beat.every_ms * 2 / 1000 > self.silence_s:
            self._warned_cadence = True
            log.warning(
                "the invalidator beats every %d ms: PGBUST_SUBSCRIBER_SILENCE_S=%s should be "
                "several times that, or a late beat bypasses L1 for nothing",
                beat.every_ms,
                self.silence_s,
            )
        if not self.capture_live and self.state == "subscribed":
            log.info("heartbeat from the active invalidator (%s): L1 serves again", beat.sender)
            self._start_caching()

    # --- messages -------------------------------------------------------------------------------

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
            message = decode_message(raw)
        except MessageError as exc:
            log.warning("undecodable invalidation message (%s): flushing L1", exc)
            self.metrics.messages.labels("undecodable").inc()
            self.l1.flush()
            return True
        if isinstance(message, Heartbeat):
            self._on_heartbeat(message)
            return False
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
