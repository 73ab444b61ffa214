"""The fault-injection proxy itself: forwards, delays, cuts, refuses."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from tests.support.proxy import TcpProxy
from tests.support.servers import RedisServer


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(redis_server.port).start()
    yield proxy
    proxy.stop()


def _client(proxy: TcpProxy) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=3)


def test_proxy_forwards_both_ways(proxy: TcpProxy) -> None:
    client = _client(proxy)
    client.set("proxy:k", b"v")
    assert client.get("proxy:k") == b"v"
    assert proxy.open_connections == 1
    client.close()


def test_proxy_delay_slows_every_round_trip(proxy: TcpProxy) -> None:
    client = _client(proxy)
    client.ping()
    proxy.set_delay(0.1)
    started = time.monotonic()
    client.ping()
    assert time.monotonic() - started >= 0.2  # request and reply each wait
    proxy.set_delay(0)
    client.close()


def test_proxy_cut_breaks_open_connections_and_block_refuses_new_ones(proxy: TcpProxy) -> None:
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=3)
    raw.sendall(b"PING\r\n")
    assert raw.recv(64) == b"+PONG\r\n"
    assert proxy.cut() == 1
    with contextlib.suppress(ConnectionResetError):
        assert raw.recv(64) == b""
    raw.close()
    proxy.block()
    fresh = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=1)
    with pytest.raises(redis.ConnectionError):
        fresh.ping()
    proxy.unblock()
    assert fresh.ping()
    fresh.close()
