"""The FastAPI application: create_app() wires settings, caches, metrics and routes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.cache import AfterLoadHook
from api.fastpath import L1FastPath, Read
from api.l1 import L1Cache
from api.metrics import Metrics
from api.metrics_server import WorkerMetricsServer
from api.routes import router, write_router
from api.runtime import Runtime
from api.settings import Settings
from pgbust.settings import load_settings

log = logging.getLogger(__name__)


class LatencyMiddleware:
    """Request latency per route template, as a pure ASGI middleware (cheap on hot paths)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            key = (scope["method"], getattr(route, "path", "<unmatched>"), status)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.histogram.labels(key[0], key[1], str(key[2]))
            child.observe(time.perf_counter() - started)


def create_app(
    settings: Settings | None = None, *, after_load: AfterLoadHook | None = None
) -> FastAPI:
    """Build the app; settings default to the environment (uvicorn --factory calls this)."""
    settings = settings or load_settings(Settings)
    l1 = L1Cache(settings.l1_max_entries, settings.l1_max_bytes, ttl_s=settings.ttl_s)
    metrics = Metrics(l1)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings, l1, metrics, after_load=after_load)
        app.state.runtime = runtime
        own_port = None
        if settings.api_metrics_port:
            own_port = WorkerMetricsServer.start(
                metrics.registry, settings.api_metrics_port, settings.workers
            )
        try:
            yield
        finally:
            if own_port is not None:
                own_port.close()
            await runtime.close()

    app = FastAPI(
        title="pgbust API",
        description="Products and categories behind a two-tier cache invalidated by CDC.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(router)
    app.include_router(write_router)
    errors.install(app, [*router.routes, *write_router.routes])
    app.add_middleware(L1FastPath, lookup=_l1_lookup, read=_read, on_error=errors.read_error)
    app.add_middleware(LatencyMiddleware, histogram=metrics.request_latency)
    return app


async def _read(scope: Scope, entry: str) -> Read | None:
    runtime: Runtime | None = getattr(scope["app"].state, "runtime", None)
    if runtime is None:
        return None
    result = await runtime.cache.read(entry)
    runtime.sample_read(entry)
    return Read(result.payload, result.source)


def _l1_lookup(scope: Scope, entry: str) -> bytes | None:
    runtime: Runtime | None = getattr(scope["app"].state, "runtime", None)
    if runtime is None:
        return None
    payload = runtime.cache.l1_hit(entry)
    if payload is not None:
        runtime.sample_read(entry)
    return payload
