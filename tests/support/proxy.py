"""A small TCP proxy on loopback that can delay traffic, cut connections and black-hole them.

Put it between a process and a server (the API and Redis, for example): the process is given
the proxy's port instead of the server's. The proxy runs its own asyncio loop in a daemon
thread, so synchronous tests drive it with plain method calls:

    proxy = TcpProxy(redis_port).start()
    proxy.set_delay(0.2)   # every chunk, both directions, waits 200 ms
    proxy.cut()            # close every open connection now (clients see a reset / EOF)
    proxy.block()          # and refuse new ones until unblock()
    proxy.black_hole(b"pgbust-api-subscriber")   # silence matching connections, see below
    proxy.heal()           # new connections are forwarded again

A *black-holed* connection stays open on both sides and forwards nothing, in either
direction, and sends neither FIN nor RST: what a client sees when a load balancer's upstream
died or a NAT / conntrack entry expired. The client's kernel still gets its TCP ACKs (from the
proxy's), so TCP keepalives never notice. `black_hole(match)` silences every connection whose
client has sent `match` (in its first bytes: a Redis CLIENT SETNAME, a Postgres startup
packet's application_name), those open now and those opened until `heal()`; without `match`,
every connection. Healing does not revive a black-holed connection: what it swallowed is lost,
as on a real network; the client must notice and reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
_CHUNK = 65536
_SEEN_LIMIT = 4096  # client bytes remembered per connection, for black_hole(match)


def postgres_application(name: str) -> bytes:
    """What a Postgres client with this application_name sends in its startup packet: a
    black_hole() match for exactly its connections (a statement that merely mentions the name,
    as a bind parameter, does not match)."""
    return b"application_name\x00" + name.encode() + b"\x00"


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    seen: bytearray = field(default_factory=bytearray)
    silent: bool = False


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.delay_s = 0.0
        self.blocked = False
        self.accepted = 0
        self.cuts = 0
        self.black_holed = 0  # connections silenced so far
        self._rule: bytes | None = None  # b"" = every connection
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()

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

    def unblock(self) -> None:
        self.blocked = False

    def black_hole(self, match: bytes | None = None) -> int:
        """Silence the connections whose client sent `match` (every one when None), now and
        until heal(); returns how many open connections were silenced now."""
        count: int = self._call(self._black_hole(match or b""))
        return count

    def silence(self) -> int:
        """Black-hole every connection open now, and only those: new ones are forwarded.
        Returns how many were silenced."""
        count = self.black_hole()
        self.heal()
        return count

    def heal(self) -> None:
        """Forward new connections again (black-holed ones stay silent until closed)."""
        self._rule = None

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    @property
    def silent_connections(self) -> int:
        return sum(1 for pair in list(self._pairs) if pair.silent)

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

    async def _cut(self) -> int:
        pairs = list(self._pairs)
        self._pairs.clear()
        for pair in pairs:
            for writer in (pair.client, pair.upstream):
                with contextlib.suppress(Exception):
                    transport = writer.transport
                    if isinstance(transport, asyncio.Transport):
                        transport.abort()  # RST, no graceful FIN: like a dead network path
                    else:
                        writer.close()
        return len(pairs)

    async def _black_hole(self, match: bytes) -> int:
        self._rule = match
        return sum(1 for pair in list(self._pairs) if self._silence_if_matched(pair))

    def _silence_if_matched(self, pair: _Pair) -> bool:
        rule = self._rule
        if pair.silent or rule is None or rule not in pair.seen:
            return False
        pair.silent = True
        self.black_holed += 1
        return True

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
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        self._silence_if_matched(pair)  # black_hole() without a match: silent from the start
        await asyncio.gather(
            self._pipe(pair, reader, up_writer, from_client=True),
            self._pipe(pair, up_reader, writer, from_client=False),
            return_exceptions=True,
        )

    async def _pipe(
        self,
        pair: _Pair,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        *,
        from_client: bool,
    ) -> None:
        try:
            while True:
                data = await src.read(_CHUNK)
                if not data:
                    break
                if from_client and len(pair.seen) < _SEEN_LIMIT:
                    pair.seen += data[: _SEEN_LIMIT - len(pair.seen)]
                    self._silence_if_matched(pair)
                if pair.silent:
                    continue  # swallowed: read (the client's kernel gets its ACKs), never sent
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                if pair not in self._pairs:
                    break  # cut while we were waiting
                if pair.silent:
                    continue  # silenced while we were waiting
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if pair.silent and not from_client and pair in self._pairs:
                # the server closed: a black hole tells the client nothing; the pair goes
                # when the client closes its side
                pass
            else:
                self._pairs.discard(pair)
                for end in (pair.client, pair.upstream):
                    with contextlib.suppress(Exception):
                        end.close()
