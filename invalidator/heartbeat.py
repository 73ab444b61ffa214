"""An active term's heartbeats: the lock beat with its capture probe, the liveness beat in
Redis, and the decision to give the leadership up (the pure rules are in liveness.py).

Two loops, so that a silent Redis cannot delay the lock beat (a standby would take a late
beat for a paused process) and a silent lock connection cannot delay the Redis side:

- lock: every `heartbeat_s`, the heartbeat row plus a probe NOTIFY, in one bounded statement
  (and at once when the listener has a new connection). Fails -> the term ends ("lock").
- redis: while capture is proven live, every `heartbeat_s` the HEARTBEAT script (liveness key
  valid until the proof expires, plus the channel message); otherwise a bounded PING, so that
  health says whether Redis is reachable. Every tick it judges the term: /healthz, metrics,
  and past `give_up_after_s` of a failing channel the term ends ("give_up").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from redis.exceptions import RedisError

from invalidator import pg
from invalidator.leader import Leadership
from invalidator.listener import Listener
from invalidator.liveness import CaptureProof, TermHealth
from invalidator.metrics import Metrics
from invalidator.sink import Sink
from invalidator.wal_source import WalSource
from pgbust.protocol import Heartbeat
from pgbust.redis_cache import RedisCache

log = logging.getLogger(__name__)


class TermBeat:
    def __init__(
        self,
        *,
        leadership: Leadership,
        listener: Listener | WalSource,
        proof: CaptureProof,
        cache: RedisCache,
        sink: Sink,
        metrics: Metrics,
        probe_channel: str,
        heartbeat_s: float,
        give_up_after_s: float,
        sender: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leadership = leadership
        self.listener = listener
        self.proof = proof
        self.cache = cache
        self.sink = sink
        self.metrics = metrics
        self.probe_channel = probe_channel
        self.heartbeat_s = heartbeat_s
        self.sender = sender
        self.clock = clock
        self.health = TermHealth(
            started_at=clock(), grace_s=proof.timeout_s, give_up_after_s=give_up_after_s
        )
        self.redis_ok = True
        self.beats = 0
        self._tick_s = min(0.05, heartbeat_s / 4)
        self._ending = False

    def describe(self) -> dict[str, Any]:
        age = self.proof.proof_age_s()
        return {
            "capture_live": self.health.live,
            "proof_age_s": None if age is None else round(age, 2),
            "problems": list(self.health.problems),
            "heartbeats": self.beats,
        }

    async def run(self) -> str:
        """Beat until the term must end; returns why: "lock" or "give_up"."""
        loops = {
            asyncio.create_task(self._lock_loop(), name="lock-beat"),
            asyncio.create_task(self._redis_loop(), name="redis-beat"),
        }
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            return str(next(iter(done)).result())
        finally:
            # cancelled, and told: a loop that misses its cancellation still ends at its next
            # tick, and the term never waits on it for longer than one bounded call
            self._ending = True
            for task in loops:
                task.cancel()
            await asyncio.wait(loops, timeout=self.proof.timeout_s + 1.0)
            for task in loops:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved (logged by the caller if it matters)
            self.metrics.capture_live.set(0)

    async def _lock_loop(self) -> str:
        next_beat = self.clock()
        probed = -1  # listener connection (count) the last probe was sent on
        while not self._ending:
            now = self.clock()
            fresh_connection = self.listener.connected and self.listener.connections != probed
            if now >= next_beat or fresh_connection:
                probe = None
                if self.listener.connected:
                    probed = self.listener.connections
                    probe = (self.probe_channel, self.proof.send())
                try:
                    await self.leadership.beat(probe)
                except psycopg.Error as exc:
                    if isinstance(exc, pg.ConnectionSilent):
                        self.metrics.silences.labels("lock").inc()
                    log.error("lost the invalidator lock connection (%s): stop serving", exc)
                    return "lock"
                next_beat = now + self.heartbeat_s
            await asyncio.sleep(self._tick_s)
        return "ended"

    async def _redis_loop(self) -> str:
        last_beat = -1e9
        last_ping = -1e9
        while not self._ending:
            now = self.clock()
            valid_s = self.proof.validity_s()
            if valid_s > 0 and (now - last_beat >= self.heartbeat_s or not self.health.live):
                self.redis_ok = await self._publish(valid_s)
                last_beat = now if self.redis_ok else last_beat
            elif valid_s <= 0 and now - last_ping >= self.heartbeat_s:
                self.redis_ok = await self._ping()
                last_ping = now
            if self._judge(self.clock(), valid_s):
                return "give_up"
            await asyncio.sleep(self._tick_s)
        return "ended"

    def _judge(self, now: float, valid_s: float) -> bool:
        problems = []
        if not self.proof.listen_proven():
            problems.append("listen: no probe back on the LISTEN connection lately")
        if not (self.redis_ok and self.sink.redis_ok):
            problems.append("redis: unreachable or not answering in time")
        live = valid_s > 0 and self.redis_ok and self.beats > 0
        if live != self.health.live:
            self.metrics.capture_live.set(int(live))
            if live:
                log.info("capture proven alive: heartbeats published")
            else:
                log.warning("capture not proven alive: heartbeats stop (%s)", problems or "late")
        self.health.observe(now, live=live, problems=tuple(problems))
        if not self.health.must_give_up(now):
            return False
        why = "redis" if any(p.startswith("redis") for p in problems) else "listen"
        self.metrics.give_ups.labels(why).inc()
        log.error(
            "cut off for more than %.1f s (PGBUST_GIVE_UP_AFTER_S): %s; giving the leadership "
            "up so that a standby that can reach both Postgres and Redis takes over",
            self.health.give_up_after_s,
            "; ".join(problems),
        )
        return True

    async def _publish(self, valid_s: float) -> bool:
        age = self.proof.proof_age_s() or 0.0
        every_ms = round(self.heartbeat_s * 1000)
        beat = Heartbeat(every_ms, sender=self.sender, proof_age_ms=round(age * 1000))
        try:
            async with asyncio.timeout(self.proof.timeout_s):
                await self.cache.heartbeat(beat, valid_ms=int(valid_s * 1000))
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)
            return False
        self.beats += 1
        self.metrics.heartbeats.inc()
        return True

    async def _ping(self) -> bool:
        try:
            async with asyncio.timeout(self.proof.timeout_s):
                await self.cache.client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)
            return False
        return True

    def _redis_failed(self, exc: BaseException) -> None:
        if not self.redis_ok:
            return  # said already
        if isinstance(exc, TimeoutError):
            self.metrics.silences.labels("redis").inc()
            log.warning("redis did not answer within %g s: silent", self.proof.timeout_s)
        else:
            log.warning("redis unreachable for the heartbeat (%s)", exc)
