"""The daemon: leadership, listener, batching, the Redis sink, health and metrics, wired up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import psycopg
from redis.exceptions import RedisError

from invalidator import pg
from invalidator.batcher import Batch
from invalidator.capture import CaptureWatch
from invalidator.cluster_watch import TopologyWatch
from invalidator.heartbeat import TermBeat
from invalidator.hot import HotEntries
from invalidator.leader import Leadership
from invalidator.listener import FlushRequest, Item, Listener
from invalidator.liveness import CaptureProof, GiveUpBackoff, Probe
from invalidator.metrics import Metrics
from invalidator.payload import parse
from invalidator.server import HealthServer
from invalidator.settings import Settings
from invalidator.sink import AppliedHook, Sink
from invalidator.tasks import SenderFactory, Tasks, worker_sender
from invalidator.wal_source import WalBatch, WalSource
from pgbust import declaration, redis_policy
from pgbust.declaration import Declaration
from pgbust.errors import StartupError
from pgbust.gc_pauses import GcPauses, freeze_startup_heap
from pgbust.keys import Keyspace
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import connect
from pgbust.replica import UNKNOWN_LSN, parse_lsn

log = logging.getLogger(__name__)
_REAP_TIMEOUT_S = 5.0
CLIENT_NAME = "pgbust-invalidator"
# The LSN marker's read of the primary's WAL position (its own session): past this the
# marker is dropped instead (readers use the primary) rather than holding the batch up.
_LSN_TIMEOUT_S = 0.5
_STOP = FlushRequest("stop", "")  # sentinel: everything queued before it is still applied


def known_lsn(batch: Batch) -> int | None:
    """The LSN marker a batch carries by itself, or None: read the primary's WAL position.

    Only WAL capture knows its commits' LSNs, and only for what the batch's transactions
    changed: a flush covers everything, so anything committed up to now."""
    if batch.wal_lsn is not None and not batch.flush:
        return batch.wal_lsn
    return None


class Invalidator:
    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        on_applied: AppliedHook | None = None,
        serve_http: bool = True,
        make_sender: SenderFactory | None = None,
        declared: Declaration | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.keyspace = Keyspace(settings.namespace, cluster=settings.redis_cluster)
        self.redis = connect(
            settings.redis_url,
            self.keyspace,
            "cdc",
            cluster=settings.redis_cluster,
            socket_connect_timeout=2,
            socket_timeout=5,
            client_name=f"{CLIENT_NAME}-{os.getpid()}",  # which process, in CLIENT LIST
        )
        # the worker tasks go where this object's settings say (flags included), never
        # where the environment would: make_sender replaces the sender in tests
        self.tasks = Tasks(self.metrics, make_sender or worker_sender(settings))
        self.tasks.preload()  # before the event loop serves anything
        # the declaration file (PGBUST_CONFIG): the rules in both capture modes, the tags of
        # the hot entries to warm again, and on a cluster where each entry lives (its home)
        self.declaration = declared or declaration.load()
        self.cache = RedisCache(self.redis, self.keyspace, home_of=self.declaration.home_of)
        self.hot = HotEntries(self.redis, self.keyspace, settings.warm_top, self.declaration)
        self.sink = Sink(
            self.cache,
            self.metrics,
            self.tasks,
            self.hot,
            retry_max_s=settings.redis_retry_max_s,
            on_applied=on_applied,
            marker=self._marker_lsn if settings.read_database_url else None,
        )
        self.queue: asyncio.Queue[Item | WalBatch] = asyncio.Queue()
        self.sender = f"{socket.gethostname()}:{os.getpid()}"
        timeout_s = settings.effective_capture_timeout_s
        self.proof = CaptureProof(self.sender, timeout_s)
        self.listener: Listener | WalSource
        if settings.capture == "wal":
            # PGBUST_CAPTURE=wal: the slot instead of LISTEN; no flush at start when the slot
            # was there (it kept everything), confirmed only after Redis applied a batch; the
            # probes come through the slot as logical messages
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
                probe_prefix=settings.probe_channel,
                proof=self.proof,
            )
        else:
            self.listener = Listener(
                settings.database_url,
                settings.channel,
                self.queue,  # type: ignore[arg-type]
                self.metrics,
                probe_channel=settings.probe_channel,
                proof=self.proof,
            )
        self.leadership = Leadership(
            settings.database_url,
            settings.effective_lock_id,
            settings.standby_poll_s,
            namespace=settings.namespace,
            heartbeat_s=settings.heartbeat_s,
            takeover_after_s=settings.takeover_after_s,
            listener_pid=lambda: self.listener.backend_pid,
            statement_timeout_s=timeout_s,
            probe_via_wal=settings.capture == "wal",
        )
        # notify mode: every committed change of a declared table must fire a trigger
        self.capture = CaptureWatch(settings.channel, self.metrics, settings.capture_check_s)
        self.term: TermBeat | None = None  # the active term's heartbeats and health
        self.backoff = GiveUpBackoff(base_s=settings.give_up_after_s)
        self.redis_reachable = True  # as a standby last saw it (it takes over only if so)
        self._standby_until = 0.0  # after giving up: no attempt on the lock before this
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
        self._lsn_conn: pg.Connection | None = None  # the LSN marker's session (read replicas)

    # --- health ---------------------------------------------------------------------------

    @property
    def capture_live(self) -> bool:
        """Active, with its capture proven alive end to end and heartbeats published."""
        return self.role == "active" and self.term is not None and self.term.health.live

    def health(self) -> tuple[int, dict[str, Any]]:
        """200 while this instance does its job: an active one while its capture is proven
        alive end to end (heartbeats published), a standby while it could take over."""
        now = time.monotonic()
        ok = self.role in {"active", "standby", "starting"}
        details: dict[str, Any] = {
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
            # capture: the trigger check (notify mode) and, while active, the liveness proof
            "capture": self.capture.health(),
            "uptime_s": round(now - self._started_at, 1),
        }
        if isinstance(self.listener, WalSource):
            details["wal_slot"] = self.listener.slot
            details["wal_slot_lag_bytes"] = int(self.metrics.wal_slot_lag_bytes._value.get())
            details["wal_lag_s"] = round(self.listener._lag_s(), 3)
        if self.role == "active" and self.term is not None:
            details["capture"].update(self.term.describe())
            details["redis_ok"] = self.sink.redis_ok and self.term.redis_ok
            ok = ok and self.term.health.healthy(now)
        elif self.role == "standby":
            details["redis_ok"] = self.redis_reachable
            details["standby_for_s"] = round(max(0.0, self._standby_until - now), 1)
            ok = ok and self.redis_reachable
        details["status"] = "ok" if ok else "unavailable" if self.role != "stopping" else self.role
        return (200 if ok else 503), details

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
        gc_pauses = GcPauses(self.metrics.gc_pauses)
        gc_pauses.install()
        if self.settings.gc_freeze:
            # a full collection's pause would delay every invalidation behind it
            self.metrics.gc_frozen.set(freeze_startup_heap())
        try:
            while not self.stopping.is_set():
                self.role = "standby"
                self.metrics.active.set(0)
                acquire = asyncio.create_task(self.leadership.acquire(self._ready))
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
            if self._lsn_conn is not None:
                await self._lsn_conn.close()
            if self.server is not None:
                await self.server.close()
            await self.redis.aclose()
            gc_pauses.remove()
            log.info("stopped")

    async def _ready(self) -> bool:
        """Asked by a standby before each attempt on the lock: not during its back-off after
        giving up, and only while it reaches Redis itself (else it could not serve either)."""
        try:
            async with asyncio.timeout(self.proof.timeout_s):
                await self.redis.ping()
            reachable = True
        except (RedisError, OSError, TimeoutError):
            reachable = False
        if reachable != self.redis_reachable:
            log.warning(
                "redis %s: %s", "reachable again" if reachable else "unreachable",
                "may take over" if reachable else "will not take the lock until it is back",
            )  # fmt: skip
            self.redis_reachable = reachable
        return reachable and time.monotonic() >= self._standby_until

    async def _serve(self) -> None:
        self.role = "active"
        self.terms += 1
        self.metrics.active.set(1)
        self.queue = asyncio.Queue()
        self.listener.queue = self.queue  # type: ignore[assignment]
        self.proof.reset()  # live only once this term's start-up flush is applied
        started = time.monotonic()
        notify = self.settings.capture == "notify"
        if notify:
            # the baseline of the capture check, before LISTEN: the term's start flush covers
            # what changed before it, the check's next round what changes after it
            self.capture.new_term()
            try:
                await self.capture.check(self.leadership.fetch, self._flush)
            except psycopg.Error as exc:
                log.warning("capture check failed (%s); retrying", str(exc).splitlines()[0])
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.proof.timeout_s):
                await self.cache.ensure_server_identity(origin="cdc")
        # on a cluster a failover is a restart of the slots it moved (invalidator/cluster_watch):
        # the term's first look queues a flush before the listener queues anything
        topology = self._topology_watch()
        if topology is not None:
            await topology.look()
        self.term = TermBeat(
            leadership=self.leadership,
            listener=self.listener,
            proof=self.proof,
            cache=self.cache,
            sink=self.sink,
            metrics=self.metrics,
            probe_channel=self.settings.probe_channel,
            heartbeat_s=self.settings.heartbeat_s,
            give_up_after_s=self.settings.give_up_after_s,
            sender=f"{self.sender}/{self.terms}",
        )
        listener = asyncio.create_task(self.listener.run(), name="listener")
        consumer = asyncio.create_task(self._consume(self.queue), name="consumer")
        watch = asyncio.create_task(self.term.run(), name="heartbeat")
        hot = asyncio.create_task(self.hot.refresh_forever(self.settings.hot_refresh_s), name="hot")
        # the trigger check has nothing to check in wal mode (no triggers: the slot is the capture)
        capture = asyncio.create_task(
            self.capture.run(self.leadership.fetch, self._flush)
            if notify
            else asyncio.Event().wait(),
            name="capture-check",
        )
        watch_topology = asyncio.create_task(
            topology.run() if topology is not None else asyncio.Event().wait(),
            name="cluster-topology",
        )
        stop: asyncio.Task[Any] = asyncio.create_task(self.stopping.wait())
        self.started.set()
        waited: set[asyncio.Task[Any]] = {listener, consumer, watch, stop}
        done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        self.started.clear()
        self.metrics.active.set(0)
        gave_up = watch in done and not watch.cancelled() and watch.exception() is None
        gave_up = gave_up and watch.result() == "give_up"
        pause = self.backoff.after_term(gave_up=gave_up, lasted_s=time.monotonic() - started)
        self._standby_until = time.monotonic() + pause
        self.redis_reachable = self.term.redis_ok and self.sink.redis_ok  # as the term saw it
        if gave_up:
            log.warning("standing by for at least %.1f s before trying the lock again", pause)
        for task in (listener, watch, hot, capture, watch_topology):
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
        await self._reap({listener, watch, hot, capture, consumer, stop, watch_topology})
        if isinstance(self.listener, WalSource):
            await self.listener.close()  # its visibility session: a standby holds none

    def _topology_watch(self) -> TopologyWatch | None:
        if not self.keyspace.cluster:
            return None
        return TopologyWatch(
            self.redis,
            self._flush,
            interval_s=min(self.settings.heartbeat_s, 0.5),
            timeout_s=self.proof.timeout_s,
        )

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

    # --- the LSN marker of read replicas (pgbust/replica.py) -------------------------------

    async def _marker_lsn(self, batch: Batch) -> int:
        """An LSN at or past the commit of every change in `batch`, which has been received.

        WAL capture: the batch's newest transaction end (pgoutput's end_lsn: the end of its
        commit record, what a replica must have replayed). A flush covers more than the batch's
        transactions, and NOTIFY capture carries no LSN: then the primary's WAL insert position,
        read now, after everything in the batch was received, so past each of its commits.
        UNKNOWN_LSN (the marker is deleted, readers use the primary) when it cannot be read."""
        known = known_lsn(batch)
        if known is not None:
            return known
        try:
            conn = self._lsn_conn
            if conn is None or conn.closed:
                conn = self._lsn_conn = await asyncio.wait_for(
                    pg.connect(self.settings.database_url, f"{CLIENT_NAME}-lsn"), _LSN_TIMEOUT_S
                )
            cur = await pg.within(
                conn,
                conn.execute("SELECT pg_current_wal_insert_lsn()::text"),
                _LSN_TIMEOUT_S,
                "LSN marker",
            )
            row = await cur.fetchone()
            return parse_lsn(str(row[0])) if row else UNKNOWN_LSN
        except (psycopg.Error, TimeoutError, ValueError) as exc:
            self.metrics.errors.labels("lsn_marker").inc()
            log.warning("cannot read the WAL position (%s): LSN marker dropped", exc)
            return UNKNOWN_LSN

    # --- batching -------------------------------------------------------------------------

    def _add(self, batch: Batch, item: Item | WalBatch) -> bool:
        """Add one queue item; False when it is the stop sentinel."""
        if item is _STOP:
            return False
        if isinstance(item, WalBatch):
            batch.add_wal(item, self.declaration)
        elif isinstance(item, FlushRequest):
            batch.add_flush(item.kind, item.reason)
        elif isinstance(item, Probe):
            batch.add_probe(item)
        else:
            batch.add(parse(item), self.declaration)
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
                        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
                        # cancellation that arrives as get() returns (cpython#86296)
                        async with asyncio.timeout(left):
                            item = await queue.get()
                    except TimeoutError:
                        break
                    running = self._add(batch, item) and self._drain(batch, queue)
            applied = True
            # a commit is in the WAL before readers see it: invalidating sooner would let a
            # reader store the old row again, for good (invalidator/visibility.py)
            source = self.listener if isinstance(self.listener, WalSource) else None
            if source and batch.wal_xids and not await source.wait_visible(batch.wal_xids):
                batch.add_flush("visibility_unknown", "cannot tell when the commits show")
            if batch:
                applied = await self.sink.apply(
                    batch, absorb=lambda b: self._absorb(b, queue), stopping=self.stopping
                )
            if applied and batch.wal_lsn is not None and isinstance(self.listener, WalSource):
                await self.listener.confirm(batch.wal_lsn)  # only now may the slot forget
            if applied and batch.probe is not None:
                self.proof.applied(batch.probe)  # capture proven up to the probe's sending
                if not batch:
                    await self.sink.refresh_marker()  # a quiet moment: keep the marker present

    def _absorb(self, batch: Batch, queue: asyncio.Queue[Item | WalBatch]) -> None:
        """While Redis is unreachable, keep merging new events into the pending batch."""
        if not self._drain(batch, queue):
            queue.put_nowait(_STOP)  # seen again by the consumer loop after this batch
