"""A tiny HTTP server in the daemon's event loop: GET /healthz (JSON) and GET /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        health: Callable[[], tuple[int, dict[str, Any]]],
        metrics: Callable[[], bytes],
    ) -> None:
        self.host = host
        self.port = port
        self.health = health
        self.metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("serving /healthz and /metrics on %s:%s", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if method != "GET":
                status, ctype, body = 405, "application/json", b'{"detail":"use GET"}'
            elif path == "/healthz":
                status, details = self.health()
                ctype, body = "application/json", orjson.dumps(details)
            elif path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, self.metrics()
            else:
                status, ctype, body = 404, "application/json", b'{"detail":"not found"}'
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
