"""Garbage-collector pauses of a long-running asyncio process: measured, and kept short.

While CPython's cyclic collector runs, the event loop runs nothing: no request is answered
and no invalidation message is applied, so every reader queued behind the pause waits, and a
read served right after it may still come from an L1 entry whose eviction message sat
unread in the socket. A full (generation 2) collection walks every container object of the
process; most of them (modules, classes, functions, FastAPI's and pydantic's structures)
were made at import and start-up and live as long as the process. Measured in an API
process under the load test (cdc mode, 2 cores, ~100k tracked objects): full collections
took 54-80 ms each, three per process in a minute; after `freeze_startup_heap` they walk
only what was made since (`pgbust_api_gc_pause_seconds{generation="2"}`).

`gc.freeze()` moves every object alive now into a permanent generation the collector never
walks (CPython's own advice for long-lived servers). Plain reference counting still frees
those objects; only a reference cycle among them, once unreachable, would stay: the
collection right before the freeze frees what is garbage already.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

# finer below 10 ms, where a pause still matters to a 1 ms read
GC_PAUSE_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


_frozen = False


def freeze_startup_heap() -> int:
    """Collect once, then exclude everything alive from later collections; returns the
    number of objects frozen. Call when start-up is done (imports, app, pools). Only the
    first call of a process freezes: what a later one would take is no longer start-up
    heap (a process running several caches, a test process)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """Times every collection of this process into a histogram labelled by generation;
    `install` registers the gc callback, `remove` takes it away again."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._started = 0.0
        for generation in ("0", "1", "2"):
            histogram.labels(generation)  # exported at 0 before the first collection

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            pause = time.perf_counter() - self._started
            self.histogram.labels(str(info["generation"])).observe(pause)
