"""The fault-injection proxy itself: forwards, delays, cuts, refuses."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.proxy import TcpProxy
from tests.support.servers import RedisServer


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(redis_server.port).start()
    yield proxy
    proxy.stop()


def _client(proxy: TcpProxy) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=3)


def _once(proxy: TcpProxy, **kwargs: Any) -> redis.Redis:
    """A client that tries once (redis-py retries timeouts on new connections by default)."""
    options = {"socket_timeout": 0.5, "retry": Retry(NoBackoff(), 0), **kwargs}
    return redis.Redis(host="127.0.0.1", port=proxy.port, **options)


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


def test_black_hole_keeps_connections_open_and_silent_until_healed(proxy: TcpProxy) -> None:
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=3)
    raw.sendall(b"PING\r\n")
    assert raw.recv(64) == b"+PONG\r\n"
    assert proxy.black_hole() == 1
    raw.settimeout(0.5)
    raw.sendall(b"PING\r\n")  # accepted by the kernel, as on a dead network path
    with pytest.raises(TimeoutError):  # no answer, and no EOF or reset either: silence
        raw.recv(64)
    fresh = _once(proxy)
    with pytest.raises(redis.TimeoutError):  # new connections are swallowed too
        fresh.ping()
    proxy.heal()
    healed = _once(proxy)
    assert healed.ping()
    healed.close()
    with pytest.raises(TimeoutError):  # what was black-holed stays dead
        raw.recv(64)
    raw.close()
    fresh.close()


def test_black_hole_by_match_silences_only_the_connections_that_sent_it(proxy: TcpProxy) -> None:
    named, other = _once(proxy, client_name="victim"), _once(proxy)
    assert named.ping() and other.ping()
    assert proxy.black_hole(b"victim") == 1
    with pytest.raises(redis.TimeoutError):
        named.ping()
    assert other.ping()
    later = _once(proxy, client_name="victim")
    with pytest.raises(redis.TimeoutError):  # a new connection that names itself so, too
        later.ping()
    assert proxy.black_holed == 2
    for client in (named, other, later):
        client.close()
