"""Handing slow work to the Celery workers without ever blocking the fast path.

The sender is made from the daemon's own settings (its broker and queue: a `--redis-url` or
`--celery-broker-url` flag reaches it), by `worker_sender`; `pgbust/task_sender.py` is imported
once, when the daemon is built (see `preload`): the invalidator runs, and only logs, when it is
absent or its broker is down. Each call runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from invalidator.metrics import Metrics
from pgbust.settings import TaskQueueSettings

log = logging.getLogger(__name__)
MAX_IN_FLIGHT = 32
SenderFactory = Callable[[], Any]  # an object with pgbust.task_sender.TaskSender's methods


def worker_sender(settings: TaskQueueSettings) -> SenderFactory:
    """A factory of the TaskSender for these settings (built at the first task, in a thread)."""

    def make() -> Any:
        from pgbust.task_sender import TaskSender

        return TaskSender(settings)

    return make


class Tasks:
    def __init__(self, metrics: Metrics, make_sender: SenderFactory) -> None:
        self.metrics = metrics
        self._make_sender = make_sender
        self._sender: Any = None
        self._sender_lock = threading.Lock()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._missing_logged = False

    def _method(self, name: str) -> Callable[..., Any] | None:
        """The sender's method for enqueue_<method>; None when the worker client is absent."""
        with self._sender_lock:
            if self._sender is None:
                try:
                    self._sender = self._make_sender()
                except ImportError as exc:
                    if not self._missing_logged:
                        log.warning("worker client not available (%s): tasks are skipped", exc)
                        self._missing_logged = True
                    return None
        method = getattr(self._sender, name.removeprefix("enqueue_"), None)
        return method if callable(method) else None

    def preload(self) -> None:
        """Import the sender (Celery) now, before serving: imported at the first send it would
        stall the event loop for a quarter of a second, listener and heartbeat included, right
        at the start-up flush."""
        self._method("enqueue_purge")

    def send(self, name: str, *args: Any) -> None:
        """Call the sender's <name without enqueue_>(*args) in a thread; never raises, never
        waits."""
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            self.metrics.errors.labels("enqueue_backlog").inc()
            log.warning("too many enqueues in flight; skipping %s", name)
            return
        task = asyncio.create_task(self._run(name, args))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _run(self, name: str, args: tuple[Any, ...]) -> None:
        def call() -> bool:
            method = self._method(name)  # the first call builds the sender: not on the loop
            if method is None:
                return False
            method(*args)
            return True

        try:
            sent = await asyncio.to_thread(call)
        except Exception as exc:  # EnqueueError or anything else: log, count, carry on
            self.metrics.errors.labels("enqueue").inc()
            log.warning("could not enqueue %s: %s", name, exc)
            return
        if sent:
            self.metrics.enqueued.labels(name.removeprefix("enqueue_")).inc()

    async def drain(self, wait_s: float = 2.0) -> None:
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=wait_s)
