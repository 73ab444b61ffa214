"""The Redis side: apply one batch (delete keys, bump tags, publish), retrying while Redis is
unreachable or refuses the command, without losing what is pending, and handing slow work to
the workers.

Nothing Redis answers may end the consumer: a batch that cannot be applied stays pending
(widened to a flush, new events merged in) and is retried with backoff until it is applied or
the daemon stops. The scripts run on a full Redis (allow-oom, pgbust/lua.py), so what is left
to refuse them is rare (read-only replica, disk error, ACL); `redis_error` says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
)

from invalidator.batcher import Batch
from invalidator.hot import HotEntries
from invalidator.metrics import Metrics
from invalidator.tasks import Tasks
from pgbust.protocol import Invalidation
from pgbust.redis_cache import RedisCache

log = logging.getLogger(__name__)
ORIGIN = "cdc"
# Errors that mean "Redis is not reachable right now": retried with backoff.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
# ... and everything else Redis may answer (a refused command): retried the same way.
_RETRIED = (RedisError, OSError)
# While a batch keeps failing, one log line per this many seconds.
_LOG_EVERY_S = 10.0
# Called after each applied batch with the time (µs) Redis confirmed it (benchmarks use it).
AppliedHook = Callable[[Batch, int], None]
# Read replicas: an LSN at or past the commit of every change in the batch, learnt after the
# batch was received (invalidator/app.py); UNKNOWN_LSN when it cannot be learnt.
MarkerSource = Callable[[Batch], Awaitable[int]]


def now_us() -> int:
    return time.time_ns() // 1000


class Sink:
    def __init__(
        self,
        cache: RedisCache,
        metrics: Metrics,
        tasks: Tasks,
        hot: HotEntries,
        *,
        retry_max_s: float = 0.25,
        on_applied: AppliedHook | None = None,
        marker: MarkerSource | None = None,
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        self.tasks = tasks
        self.hot = hot
        self.retry_max_s = retry_max_s
        self.on_applied = on_applied
        # set (PGBUST_READ_DATABASE_URL): every invalidation raises the LSN marker with it
        self.marker = marker
        self.redis_ok = True
        self.redis_error = ""  # why the pending batch is not applied yet ("" when it was)
        self.pending_events = 0  # events of that batch

    async def apply(
        self,
        batch: Batch,
        absorb: Callable[[Batch], None] | None = None,
        stopping: asyncio.Event | None = None,
    ) -> bool:
        """Apply the batch; while Redis is unreachable or refuses, keep retrying with backoff,
        merging newly arrived events into it (`absorb`). After a failure the batch is a flush:
        API instances may have served from L1 what we could not announce. Returns False only
        when stopping gave up (the batch was handed to the worker's retry task)."""
        failures = 0
        was_unreachable = False
        last_log = 0.0

        async def sleep(seconds: float) -> None:
            if stopping is None:
                await asyncio.sleep(seconds)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), seconds)

        def give_up(state: RetryCallState) -> bool:
            return stopping is not None and stopping.is_set()

        def on_failure(state: RetryCallState) -> None:
            nonlocal failures, was_unreachable, last_log
            failures += 1
            exc = state.outcome.exception() if state.outcome else None
            unreachable = isinstance(exc, _UNREACHABLE)
            was_unreachable = was_unreachable or unreachable
            self.redis_ok = False
            self.redis_error = f"{type(exc).__name__}: {exc}"[:200]
            self.pending_events = len(batch)
            self.metrics.pending_events.set(len(batch))
            self.metrics.errors.labels("redis" if unreachable else "redis_refused").inc()
            if failures == 1:
                if unreachable:
                    self._hand_over(batch, "redis unreachable")
                    batch.add_flush("redis_back", "redis was unreachable")
                else:
                    batch.add_flush("redis_error", f"redis refused the invalidation: {exc}"[:200])
            now = time.monotonic()
            if failures == 1 or now - last_log >= _LOG_EVERY_S:
                last_log = now
                log.error(
                    "redis %s (%s): invalidation pending, %d events; retrying (attempt %d)",
                    "unreachable" if unreachable else "refused the invalidation",
                    exc,
                    len(batch),
                    failures,
                )

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_RETRIED),
                wait=wait_exponential(multiplier=0.02, max=self.retry_max_s),
                stop=give_up,
                sleep=sleep,
                before_sleep=on_failure,
                reraise=True,
            ):
                with attempt:
                    if failures and absorb is not None:
                        absorb(batch)  # what arrived meanwhile rides along
                    await self._send_or_widen(batch)
        except _RETRIED as exc:
            log.error(
                "stopping with %d events not applied (%s); handed to the worker", len(batch), exc
            )
            self._hand_over(batch, "invalidator stopped while redis could not apply it")
            return False
        if was_unreachable:
            self.metrics.reconnects.labels("redis").inc()
        if failures:
            log.warning("redis applied the pending batch after %d failed attempts", failures)
        self.redis_ok = True
        self.redis_error = ""
        self.pending_events = 0
        self.metrics.pending_events.set(0)
        return True

    async def _send_or_widen(self, batch: Batch) -> None:
        """Send; if Redis refuses the command itself (not a connection problem), retrying the
        same thing cannot help: widen to a flush (epoch bump, another script) instead. A
        refused flush is raised and retried by `apply`."""
        try:
            await self._send(batch)
        except _UNREACHABLE:
            raise
        except RedisError as exc:
            if batch.flush:
                raise
            self.metrics.errors.labels("redis_command").inc()
            log.error("redis refused the invalidation (%s); flushing instead", exc)
            batch.add_flush("redis_error", f"redis refused the invalidation: {exc}"[:200])
            await self._send(batch)

    def _hand_over(self, batch: Batch, reason: str) -> None:
        targets = batch.targets()
        self.tasks.send(
            "enqueue_retry_invalidation",
            sorted(targets.keys),
            sorted(targets.tags),
            targets.flush,
            f"{reason}: {batch.reason}" if batch.reason else reason,
        )

    async def _send(self, batch: Batch) -> None:
        targets = batch.targets()
        # learnt at each attempt: events absorbed while Redis was away are covered too
        lsn = await self.marker(batch) if self.marker is not None else None
        if targets.flush:
            reason = batch.reason or "flush"
            epoch = await self.cache.bump_epoch(reason, origin=ORIGIN, lsn=lsn)
            self.metrics.epoch_bumps.labels(batch.flush_kind or "flush").inc()
            # the log line and epoch_bumps name the first cause; a flush merged from several
            # (a failover seen while Redis was coming back) counts each of them here
            for cause in sorted(batch.flush_causes) or [batch.flush_kind or "flush"]:
                self.metrics.flush_causes.labels(cause).inc()
            log.warning("epoch bumped to %s: %s", epoch, reason)
            self.tasks.send("enqueue_purge", reason)
        else:
            message = Invalidation.of(
                targets, origin=ORIGIN, ts_us=batch.earliest_ts_us, reason=batch.reason
            )
            result = await self.cache.invalidate(targets, message, lsn=lsn)
            if result.garbage:
                self.tasks.send("enqueue_garbage", result.garbage)
        done = now_us()
        self._record(batch, done)
        hot = self.hot.affected(targets)
        if hot:
            self.tasks.send("enqueue_warm", hot)
        if self.on_applied is not None:
            self.on_applied(batch, done)

    async def refresh_marker(self) -> None:
        """Between invalidations (at each capture probe): write the LSN marker again, so one
        that was evicted or lost with a Redis flush sends readers to the primary only briefly.
        Best effort; never raises."""
        if self.marker is None:
            return
        try:
            await self.cache.raise_lsn(await self.marker(Batch()))
        except (RedisError, OSError) as exc:
            log.debug("could not refresh the LSN marker: %s", exc)

    def _record(self, batch: Batch, done_us: int) -> None:
        m = self.metrics
        m.batches.inc()
        m.batch_events.observe(batch.events)
        m.keys_deleted.inc(len(batch.keys))
        m.tags_invalidated.inc(len(batch.tags))
        for table, n in batch.tables.items():
            m.events.labels(table).inc(n)
        for problem, n in batch.problems.items():
            m.malformed.labels(problem).inc(n)
        for ts in batch.timestamps:
            m.lag.observe(max(0, done_us - ts) / 1e6)
        batch.tables.clear()  # counted once even if the batch object is reused
        batch.problems.clear()
