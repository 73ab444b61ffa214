"""A pipelined lane to Redis for the read path's scripts (GET_OR_LEASE, FILL, RELEASE_LEASE).

redis-py spends most of a miss's Redis time on its own machinery, not on Redis: per command
a pool checkout, a task and a timer for the send (`asyncio.wait_for`), a timer for the read,
retries, observability hooks. Measured on one API process serving only misses, its two
script calls were ~130 µs of CPU per miss, against ~140 µs for the whole Postgres load. A
lane is one connection on which every caller of the process writes its EVALSHA and waits for
its reply: Redis answers in order, so the n-th reply is the n-th waiter's, and one read of
the socket may answer many waiters at once.

What stays as it was:
- the connection is opened by redis-py with the client's own settings (address, AUTH, TLS,
  SELECT, its connect timeout) and its `redis_connect_func`, so the server identity check of
  pgbust.redis_connect (the epoch bump after a Redis restart) runs on it before the lane
  sends anything; only then does the lane take the socket over;
- errors are redis-py's (`RedisError` subclasses, replies mapped as its parsers map them:
  `OutOfMemoryError`, `ReadOnlyError`, ...), so callers fall back exactly as before;
- every command is bounded by the client's `socket_timeout`: one timer per lane (not per
  command) closes the connection when the oldest unanswered command is older than that, and
  fails every waiter with `TimeoutError`; a lost connection fails every waiter with
  `ConnectionError`; the next command opens (and checks) a new connection;
- a script Redis no longer knows (NOSCRIPT: SCRIPT FLUSH, a restart) is sent again as EVAL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError, NoScriptError, RedisError, TimeoutError


class _Protocol(asyncio.Protocol):
    """One connection's in-order replies, handed to its waiters."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self.loop = loop
        self.timeout = timeout
        self.transport: asyncio.WriteTransport | None = None
        self.streams: tuple[object, object] | None = None
        self.closed = False
        self._reader = hiredis.Reader(replyError=BaseParser.parse_error)
        self._waiters: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._unsent: list[bytes] = []

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        self._waiters.append((future, self.loop.time()))
        # written at the end of this turn of the event loop, together with what every other
        # reader sent in it: one write (one wake-up of Redis) for many commands
        if not self._unsent:
            self.loop.call_soon(self._flush)
        self._unsent.append(packed)
        if self._timer is None and self.timeout is not None:
            self._timer = self.loop.call_later(self.timeout, self._check_timeout)
        return future

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, []
        if not self.closed and self.transport is not None:
            self.transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiters = self._waiters
        while (reply := reader.gets()) is not False:
            if not waiters:  # a reply nobody asked for: the stream cannot be trusted
                self._fail(ConnectionError("redis lane: unexpected reply"))
                return
            future = waiters.popleft()[0]
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"redis lane: connection lost ({exc or 'closed'})"))

    def _check_timeout(self) -> None:
        self._timer = None
        if not self._waiters or self.closed or self.timeout is None:
            return
        oldest = self._waiters[0][1]
        if self.loop.time() - oldest >= self.timeout:
            self._fail(TimeoutError("Timeout reading from socket"))
        else:
            self._timer = self.loop.call_at(oldest + self.timeout, self._check_timeout)

    def _fail(self, error: RedisError) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()
        waiters, self._waiters = self._waiters, collections.deque()
        for future, _ in waiters:
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        if not self.closed:
            self._fail(ConnectionError("redis lane closed"))


class Lane:
    """Scripts of a redis.asyncio client, pipelined over one connection of its own."""

    def __init__(self, client: aioredis.Redis, preload: tuple[Any, ...] = ()) -> None:
        self.client = client
        # scripts loaded on each new connection before anything else is sent on it, so that
        # EVAL (the script's text, cached by Redis) is only ever the answer to a SCRIPT FLUSH
        self.preload = preload
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    async def evalsha(self, sha: str, script: Any, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA of a script (EVAL when Redis does not know it), as redis-py would reply."""
        packed = hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))
        try:
            return await (await self._lane()).send(packed)
        except NoScriptError:
            packed = hiredis.pack_command(("EVAL", script, len(keys), *keys, *args))
            return await (await self._lane()).send(packed)

    def send_nowait(self, *command: Any) -> asyncio.Future[Any] | None:
        """Send a command on the open connection without waiting for its reply (its future
        has it); None when no connection of this event loop is open (nothing sent)."""
        protocol = self._protocol
        if protocol is None or protocol.closed or protocol.loop is not asyncio.get_running_loop():
            return None
        return protocol.send(hiredis.pack_command(command))

    async def _lane(self) -> _Protocol:
        protocol = self._protocol
        loop = asyncio.get_running_loop()
        if protocol is not None and not protocol.closed:
            if protocol.loop is loop:
                return protocol
            # opened in another event loop (one per test): that loop owns its transport
            protocol.closed = True
        connecting = self._connecting
        if connecting is None or connecting.get_loop() is not loop:
            connecting = self._connecting = asyncio.create_task(self._connect())
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Protocol:
        pool = self.client.connection_pool
        # the client's connection class and settings: handshake, TLS, redis_connect_func
        connection = pool.connection_class(**pool.connection_kwargs)
        await connection.connect()  # type: ignore[no-untyped-call]
        reader, writer = connection._reader, connection._writer
        if reader is None or writer is None or reader._buffer:  # type: ignore[attr-defined]
            await connection.disconnect()
            raise ConnectionError("redis lane: connection not in a state to take over")
        transport = writer.transport
        protocol = _Protocol(asyncio.get_running_loop(), connection.socket_timeout)
        protocol.transport = transport
        # the streams stay referenced: a collected StreamWriter closes its transport
        protocol.streams = (reader, writer)
        transport.set_protocol(protocol)
        # the socket is the lane's now: redis-py must not close it when it collects this object
        connection._reader = connection._writer = None
        load: list[tuple[Any, ...]] = [("SCRIPT", "LOAD", script) for script in self.preload]
        loaded = [protocol.send(hiredis.pack_command(command)) for command in load]
        try:
            await asyncio.gather(*loaded)
        except BaseException:
            protocol.close()
            raise
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and not protocol.closed:
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                protocol.close()
