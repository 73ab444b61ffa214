"""FastAPI integration: the cache started and stopped with the app, a dependency, a response.

    cache = pgbust.Cache(settings, declaration, loaders)
    app = FastAPI(lifespan=cache_lifespan(cache))

    @app.get("/orders/{id}")
    async def order(id: str, cache: CacheDependency) -> Response:
        return cached_response(await cache.read("order:{id}", id=id))

The payload is served as the loader's bytes (no re-encoding); a missing entry is a 404;
`X-Cache` says which tier answered (L1, L2, MISS).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response

from pgbust.cache import Cache
from pgbust.read_path import ReadResult

STATE_ATTRIBUTE = "pgbust"


def cache_lifespan(
    cache: Cache,
    inner: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI lifespan that starts the cache (as app.state.pgbust) and closes it; `inner`
    is the app's own lifespan, run inside it (the cache is up while it runs)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await cache.start()
        setattr(app.state, STATE_ATTRIBUTE, cache)
        try:
            if inner is None:
                yield
            else:
                async with inner(app):
                    yield
        finally:
            await cache.close()

    return lifespan


def get_cache(request: Request) -> Cache:
    cache: Cache | None = getattr(request.app.state, STATE_ATTRIBUTE, None)
    if cache is None:
        raise HTTPException(503, "the cache is not started (is cache_lifespan the app's lifespan?)")
    return cache


CacheDependency = Annotated[Cache, Depends(get_cache)]


def cached_response(
    read: ReadResult, *, media_type: str = "application/json", not_found: str = "not found"
) -> Response:
    """200 with the payload as it is, or 404 when the loader said the entry does not exist."""
    headers = {"X-Cache": read.source}
    if read.payload is None:
        raise HTTPException(404, not_found, headers=headers)
    return Response(read.payload, media_type=media_type, headers=headers)
