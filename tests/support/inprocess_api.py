"""The demo API served in the test's own process: its lifespan, an ASGI client, caching."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import httpx
from fastapi import FastAPI

from api.app import create_app
from api.settings import Settings
from pgbust.cache import Cache


async def start_api(stack: AsyncExitStack, settings: Settings) -> tuple[httpx.AsyncClient, Cache]:
    """Start the app (its lifespan entered on `stack`, so it stops with it) and return an
    ASGI client and its cache runtime, once a subscriber (if it has one) has confirmed its
    subscription: L1 serves from then on."""
    app: FastAPI = create_app(settings)
    await stack.enter_async_context(app.router.lifespan_context(app))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
    await stack.enter_async_context(client)
    runtime: Cache = app.state.pgbust
    if runtime.subscriber is not None:
        await asyncio.wait_for(runtime.subscriber.caching.wait(), 5)
    return client, runtime
