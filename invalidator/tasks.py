"""Handing slow work to the Celery workers without ever blocking the fast path.

`worker/client.py` (the worker's thin sender) is imported once, when the daemon is built (see
`preload`): the invalidator runs, and only logs, when it is absent or its broker is down. Each
call runs in a thread.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import Any

from invalidator.metrics import Metrics

log = logging.getLogger(__name__)
MAX_IN_FLIGHT = 32


class Tasks:
    def __init__(self, metrics: Metrics, client_module: str = "worker.client") -> None:
        self.metrics = metrics
        self.client_module = client_module
        self._in_flight: set[asyncio.Task[None]] = set()
        self._missing_logged = False

    def _function(self, name: str) -> Callable[..., Any] | None:
        try:
            module = importlib.import_module(self.client_module)
        except ImportError:
            if not self._missing_logged:
                log.warning("%s is not available: worker tasks are skipped", self.client_module)
                self._missing_logged = True
            return None
        function = getattr(module, name, None)
        return function if callable(function) else None

    def preload(self) -> None:
        """Import the sender (Celery) now, before serving: imported at the first send it would
        stall the event loop for a quarter of a second, listener and heartbeat included, right
        at the start-up flush."""
        self._function("enqueue_purge")

    def send(self, name: str, *args: Any) -> None:
        """Call worker.client.<name>(*args) in a thread; never raises, never waits."""
        function = self._function(name)
        if function is None:
            return
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            self.metrics.errors.labels("enqueue_backlog").inc()
            log.warning("too many enqueues in flight; skipping %s", name)
            return
        task = asyncio.create_task(self._run(name, function, args))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _run(self, name: str, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            await asyncio.to_thread(function, *args)
        except Exception as exc:  # EnqueueError or anything else: log, count, carry on
            self.metrics.errors.labels("enqueue").inc()
            log.warning("could not enqueue %s: %s", name, exc)
        else:
            self.metrics.enqueued.labels(name.removeprefix("enqueue_")).inc()

    async def drain(self, wait_s: float = 2.0) -> None:
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=wait_s)
