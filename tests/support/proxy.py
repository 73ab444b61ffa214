"""A small TCP proxy on loopback that can delay traffic and cut connections (fault injection).

Put it between a process and a server (the API and Redis, for example): the process is given
the proxy's port instead of the server's. The proxy runs its own asyncio loop in a daemon
thread, so synchronous tests drive it with plain method calls:

    proxy = TcpProxy(redis_port).start()
    proxy.set_delay(0.2)   # every chunk, both directions, waits 200 ms
    proxy.cut()            # close every open connection now (clients see a reset / EOF)
    proxy.block()          # and refuse new ones until unblock()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_CHUNK = 65536


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.delay_s = 0.0
        self.blocked = False
        self.accepted = 0
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._silenced: set[asyncio.StreamWriter] = set()

    # --- control (called from the test's thread) -----------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def set_delay(self, seconds: float) -> None:
        """Delay each forwarded chunk (both directions) by this much; 0 to stop delaying."""
        self.delay_s = seconds

    def cut(self) -> int:
        """Close every open connection (both sides); returns how many pairs were cut."""
        count: int = self._call(self._cut())
        self.cuts += 1
        return count

    def block(self) -> None:
        """Refuse new connections (accept and close at once) and cut the open ones."""
        self.blocked = True
        self.cut()

    def silence(self) -> int:
        """Black-hole the open connections: they stay open but nothing passes any more, in
        either direction (a dead network path without RST or FIN); new ones work."""
        pairs: int = self._call(self._silence())
        return pairs

    def unblock(self) -> None:
        self.blocked = False

    @property
    def open_connections(self) -> int:
        return len(self._writers) // 2

    # --- the proxy itself (runs on the proxy's loop) --------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        sock: socket.socket = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _silence(self) -> int:
        self._silenced.update(self._writers)
        return len(self._writers) // 2

    async def _cut(self) -> int:
        writers = list(self._writers)
        self._writers.clear()
        for writer in writers:
            with contextlib.suppress(Exception):
                transport = writer.transport
                if isinstance(transport, asyncio.Transport):
                    transport.abort()  # RST, no graceful FIN: like a dead network path
                else:
                    writer.close()
        return len(writers) // 2

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, writer),
            self._pipe(up_reader, writer, up_writer),
            return_exceptions=True,
        )

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
    ) -> None:
        try:
            while True:
                data = await src.read(_CHUNK)
                if not data:
                    break
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                if dst not in self._writers:
                    break  # cut while we were waiting
                if dst in self._silenced:
                    continue  # black-holed: read and drop
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            for end in (dst, other):
                self._writers.discard(end)
                with contextlib.suppress(Exception):
                    end.close()
