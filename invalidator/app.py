"""The daemon: leadership, listener, batching, the Redis sink, health and metrics, wired up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psycopg

from invalidator.batcher import Batch
from invalidator.capture import CaptureWatch
from invalidator.hot import HotEntries
from invalidator.leader import Leadership
from invalidator.listener import FlushRequest, Item, Listener
from invalidator.metrics import Metrics
from invalidator.payload import parse
from invalidator.server import HealthServer
from invalidator.settings import Settings
from invalidator.sink import AppliedHook, Sink
from invalidator.tasks import SenderFactory, Tasks, worker_sender
from invalidator.wal_source import WalBatch, WalSource
from pgbust import declaration, redis_policy
from pgbust.errors import StartupError
from pgbust.keys import Keyspace
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import connect

log = logging.getLogger(__name__)
_REAP_TIMEOUT_S = 5.0
_STOP = FlushRequest("stop", "")  # sentinel: everything queued before it is still applied


class Invalidator:
    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        on_applied: AppliedHook | None = None,
        serve_http: bool = True,
        make_sender: SenderFactory | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.keyspace = Keyspace(settings.namespace)
        self.redis = connect(
            settings.redis_url, self.keyspace, "cdc", socket_connect_timeout=2, socket_timeout=5
        )
        self.cache = RedisCache(self.redis, self.keyspace)
        # the worker tasks go where this object's settings say (flags included), never
        # where the environment would: make_sender replaces the sender in tests
        self.tasks = Tasks(self.metrics, make_sender or worker_sender(settings))
        self.hot = HotEntries(self.redis, self.keyspace, settings.warm_top)
        self.sink = Sink(
            self.cache,
            self.metrics,
            self.tasks,
            self.hot,
            retry_max_s=settings.redis_retry_max_s,
            on_applied=on_applied,
        )
        self.queue: asyncio.Queue[Item | WalBatch] = asyncio.Queue()
        self.declaration = declaration.load() if settings.capture == "wal" else None
        self.listener: Listener | WalSource
        if self.declaration is not None:
            # PGBUST_CAPTURE=wal: the slot instead of LISTEN; no flush at start when the slot
            # was there (it kept everything), confirmed only after Redis applied a batch
            self.listener = WalSource(
                settings.database_url,
                settings.slot_name,
                settings.publication_name,
                self.declaration,
                self.queue,  # type: ignore[arg-type]  # the term's queue, set in _serve
                self.metrics,
                status_interval_s=settings.wal_status_interval_s,
                keepalive_s=settings.wal_keepalive_s,
                timeout_s=settings.wal_timeout_s,
            )
        else:
            self.listener = Listener(
                settings.database_url,
                settings.channel,
                self.queue,  # type: ignore[arg-type]
                self.metrics,
            )
        self.leadership = Leadership(
            settings.database_url,
            settings.effective_lock_id,
            settings.standby_poll_s,
            namespace=settings.namespace,
            heartbeat_s=settings.heartbeat_s,
            takeover_after_s=settings.takeover_after_s,
            listener_pid=lambda: self.listener.backend_pid,
        )
        self.capture = CaptureWatch(settings.channel, self.metrics, settings.capture_check_s)
        self.server = (
            HealthServer(
                settings.metrics_host, settings.metrics_port, self.health, self.metrics.render
            )
            if serve_http
            else None
        )
        self.role = "starting"
        self.stopping = asyncio.Event()
        self.started = asyncio.Event()  # set while serving as the active instance
        self.terms = 0  # how many times this process became the active one
        self.redis_memory: dict[str, str] = {}
        self._started_at = time.monotonic()

    # --- health ---------------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        details = {
            "status": "ok" if self.role in {"active", "standby", "starting"} else self.role,
            "role": self.role,
            "listener_connected": self.listener.connected,
            "capture_mode": self.settings.capture,
            "redis_ok": self.sink.redis_ok,
            "redis_error": self.sink.redis_error,
            "pending_events": self.sink.pending_events,
            "redis_memory": self.redis_memory,
            "terms": self.terms,
            "queued": self.queue.qsize(),
            "namespace": self.settings.namespace,
            "lock_id": self.leadership.lock_id,
            "takeovers": self.leadership.takeovers,
            "capture": self.capture.health(),
            "uptime_s": round(time.monotonic() - self._started_at, 1),
        }
        if isinstance(self.listener, WalSource):
            m = self.metrics
            details["wal_slot"] = self.listener.slot
            details["wal_slot_lag_bytes"] = int(m.wal_slot_lag_bytes._value.get())
            details["wal_lag_s"] = round(self.listener._lag_s(), 3)
        return (200 if self.role != "stopping" else 503), details

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in hand (and what was already received), then return from run()."""
        log.info("stop requested")
        self.stopping.set()

    async def run(self) -> None:
        if self.server is not None:
            try:
                await self.server.start()
            except OSError as exc:
                await self.redis.aclose()
                raise StartupError(
                    f"cannot serve /healthz on {self.server.host}:{self.server.port} "
                    f"(PGBUST_INVALIDATOR_METRICS_PORT / --metrics-port): {exc.strerror or exc}"
                ) from None
        memory = await redis_policy.read(self.redis)
        redis_policy.log_verdict(memory, "invalidator")
        self.metrics.redis_memory_policy.labels(memory.policy, memory.verdict).set(1)
        self.redis_memory = {"policy": memory.policy, "verdict": memory.verdict}
        try:
            while not self.stopping.is_set():
                self.role = "standby"
                self.metrics.active.set(0)
                acquire = asyncio.create_task(self.leadership.acquire())
                stop = asyncio.create_task(self.stopping.wait())
                await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not acquire.done():
                    acquire.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await acquire
                    break
                stop.cancel()
                await self._serve()
        finally:
            self.role = "stopping"
            await self.leadership.release()
            await self.tasks.drain()
            if self.server is not None:
                await self.server.close()
            await self.redis.aclose()
            log.info("stopped")

    async def _serve(self) -> None:
        self.role = "active"
        self.terms += 1
        self.metrics.active.set(1)
        self.queue = asyncio.Queue()
        self.listener.queue = self.queue  # type: ignore[assignment]
        if self.settings.capture == "notify":
            # the baseline of the capture check, before LISTEN: the term's start flush covers
            # what changed before it, the check's next round what changes after it
            self.capture.new_term()
            try:
                await self.capture.check(self.leadership.fetch, self._flush)
            except psycopg.Error as exc:
                log.warning("capture check failed (%s); retrying", str(exc).splitlines()[0])
        with contextlib.suppress(Exception):
            await self.cache.ensure_server_identity(origin="cdc")
        listener = asyncio.create_task(self.listener.run(), name="listener")
        consumer = asyncio.create_task(self._consume(self.queue), name="consumer")
        watch = asyncio.create_task(self.leadership.watch(), name="lock-watch")
        hot = asyncio.create_task(self.hot.refresh_forever(self.settings.hot_refresh_s), name="hot")
        # the trigger check has nothing to check in wal mode (no triggers: the slot is the capture)
        capture = asyncio.create_task(
            self.capture.run(self.leadership.fetch, self._flush)
            if self.settings.capture == "notify"
            else asyncio.Event().wait(),
            name="capture-check",
        )
        stop: asyncio.Task[Any] = asyncio.create_task(self.stopping.wait())
        self.started.set()
        waited: set[asyncio.Task[Any]] = {listener, consumer, watch, stop}
        done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        self.started.clear()
        self.metrics.active.set(0)
        for task in (listener, watch, hot, capture):
            task.cancel()
        self.capture.end_term()
        if stop in done:
            self.queue.put_nowait(_STOP)
            try:
                await asyncio.wait_for(consumer, timeout=15)
            except TimeoutError:
                log.error("could not drain the last batch in time")
        else:
            self.role = "standby"  # not serving any more: someone else may take over
            # _STOP as well as cancel: a consumer that misses its cancellation (seen under
            # chaos on Python 3.11) still ends, and never reads the next term's queue
            self.queue.put_nowait(_STOP)
            consumer.cancel()
            stop.cancel()
            for task in done:
                if task is not stop and not task.cancelled() and task.exception() is not None:
                    log.error("%s failed: %r", task.get_name(), task.exception())
            await self.leadership.release()
            await asyncio.sleep(self.settings.standby_poll_s)
        await self._reap({listener, watch, hot, capture, consumer, stop})

    def _flush(self, request: FlushRequest) -> None:
        """Flush everything, in order with the changes already received (this term's queue)."""
        self.queue.put_nowait(request)

    async def _reap(self, tasks: set[asyncio.Task[Any]]) -> None:
        """Wait for the term's tasks to end; one that ignores its cancellation is logged with
        its stack and left behind rather than keeping this process from standing by again."""
        _, stuck = await asyncio.wait(tasks, timeout=_REAP_TIMEOUT_S)
        for task in stuck:
            frames = "; ".join(
                f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack()
            )
            log.error(
                "task %s did not stop within %.0f s: %s", task.get_name(), _REAP_TIMEOUT_S, frames
            )

    # --- batching -------------------------------------------------------------------------

    def _add(self, batch: Batch, item: Item | WalBatch) -> bool:
        """Add one queue item; False when it is the stop sentinel."""
        if item is _STOP:
            return False
        if isinstance(item, WalBatch):
            assert self.declaration is not None
            batch.add_wal(item, self.declaration)
        elif isinstance(item, FlushRequest):
            batch.add_flush(item.kind, item.reason)
        else:
            batch.add(parse(item))
        return True

    def _drain(self, batch: Batch, queue: asyncio.Queue[Item | WalBatch]) -> bool:
        """Move what is already queued into the batch (up to batch_max); False on stop."""
        limit = self.settings.batch_max
        while len(batch) < limit:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return True
            if not self._add(batch, item):
                return False
        return True

    async def _consume(self, queue: asyncio.Queue[Item | WalBatch]) -> None:
        """Apply the batches of one term, read from that term's own queue until _STOP."""
        window_s = self.settings.batch_window_ms / 1000
        running = True
        while running:
            batch = Batch()
            running = self._add(batch, await queue.get())
            batch.opened_us = time.time_ns() // 1000
            if running:
                running = self._drain(batch, queue)
            if running:
                # let the listener read what is already in its socket, then take that too
                await asyncio.sleep(0)
                running = self._drain(batch, queue)
                deadline = time.monotonic() + window_s
                while running and len(batch) < self.settings.batch_max:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        break
                    running = self._add(batch, item) and self._drain(batch, queue)
            if batch:
                applied = await self.sink.apply(
                    batch, absorb=lambda b: self._absorb(b, queue), stopping=self.stopping
                )
                if applied and batch.wal_lsn is not None and isinstance(self.listener, WalSource):
                    await self.listener.confirm(batch.wal_lsn)  # only now may the slot forget

    def _absorb(self, batch: Batch, queue: asyncio.Queue[Item | WalBatch]) -> None:
        """While Redis is unreachable, keep merging new events into the pending batch."""
        if not self._drain(batch, queue):
            queue.put_nowait(_STOP)  # seen again by the consumer loop after this batch
