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
from api.fastpath import L1FastPath, Read
from api.loaders import LOADERS
from api.metrics_server import WorkerMetricsServer
from api.routes import router, write_router
from api.settings import Settings
from pgbust import declaration as declarations
from pgbust.cache import Cache
from pgbust.declaration import Declaration
from pgbust.fastapi import STATE_ATTRIBUTE, cache_lifespan
from pgbust.read_path import AfterLoadHook
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
    settings: Settings | None = None,
    *,
    after_load: AfterLoadHook | None = None,
    declaration: Declaration | None = None,
) -> FastAPI:
    """Build the app; settings default to the environment and the declaration to
    PGBUST_CONFIG (uvicorn --factory calls this)."""
    settings = settings or load_settings(Settings)
    declaration = declaration or declarations.load()
    cache = Cache(settings, declaration, LOADERS, after_load=after_load, pool_name="pgbust-api")

    @asynccontextmanager
    async def own_metrics_port(app: FastAPI) -> AsyncIterator[None]:
        own_port = None
        if settings.api_metrics_port:
            own_port = WorkerMetricsServer.start(
                cache.metrics.registry, settings.api_metrics_port, settings.workers
            )
        try:
            yield
        finally:
            if own_port is not None:
                own_port.close()

    app = FastAPI(
        title="pgbust API",
        description="Products and categories behind a two-tier cache invalidated by CDC.",
        version="0.1.0",
        lifespan=cache_lifespan(cache, inner=own_metrics_port),
    )
    app.state.settings = settings
    app.state.api_token = settings.api_token.get_secret_value().encode()
    app.include_router(router)
    app.include_router(write_router)
    errors.install(app, [*router.routes, *write_router.routes])
    app.add_middleware(L1FastPath, lookup=_l1_lookup, read=_read, on_error=errors.read_error)
    app.add_middleware(LatencyMiddleware, histogram=cache.metrics.request_latency)
    return app


def _started(scope: Scope) -> Cache | None:
    cache: Cache | None = getattr(scope["app"].state, STATE_ATTRIBUTE, None)
    return cache


async def _read(scope: Scope, entry: str) -> Read | None:
    cache = _started(scope)
    if cache is None:
        return None
    result = await cache.read(entry)
    return Read(result.payload, result.source)


def _l1_lookup(scope: Scope, entry: str) -> bytes | None:
    cache = _started(scope)
    return None if cache is None else cache.l1_hit(entry)
