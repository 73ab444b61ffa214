"""The one way components open a cache client to Redis: `connect(url, keyspace, origin)`.

Every new connection of the client's pool runs a hook (redis-py's `redis_connect_func`)
BEFORE the pool hands it out: it reads the server's run_id (`INFO server`) and runs the
ENSURE_SERVER script, which bumps the namespace epoch when that run_id differs from the
identity stored in the namespace. A Redis that restarted (possibly from an old snapshot
that still holds values deleted by later invalidations) is therefore detected before the
first read, lease or fill on the new server — not seconds later when some background loop
notices. Redis restarts close every connection, so every command after a restart goes
through a new, checked connection. If the check fails the connection is dropped and the
command fails (callers fall back to Postgres): never served unchecked. The check runs on a
full Redis (ENSURE_SERVER is flagged allow-oom); a read-only replica refuses it, so nothing
is read from one.

With PGBUST_REDIS_CLUSTER=true (`cluster=True`) the client is redis-py's asyncio
RedisCluster: REDIS_URL names any node, the client discovers the others and follows MOVED /
ASK. redis-py's cluster client has no per-connection hook, so the restart check above is not
run there; on a cluster a node restarted empty has lost its slots' guard keys too, which
makes every stamp of those slots dead (pgbust/lua.py, "Guard keys may vanish").
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError

from pgbust import lua
from pgbust.keys import Keyspace
from pgbust.protocol import flush_message

log = logging.getLogger(__name__)
_P = ParamSpec("_P")
_T = TypeVar("_T")


_REDIS_CONNECTION_CODE = os.path.join("redis", "asyncio", "connection.py")


def _raised_writing_a_connection(exc: RuntimeError) -> bool:
    """A RuntimeError raised under redis-py's connection code: uvloop's "unable to perform
    operation on <TCPTransport closed=True>; the handler is closed", for a write on a
    connection its node already closed (seen in the middle of a CLUSTER FAILOVER, in the
    handshake of a connection the demoted master dropped). redis-py classifies only OSError
    there (redis-py#4217 is about the same race on the stdlib loop)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(_REDIS_CONNECTION_CODE):
            return True
        tb = tb.tb_next
    return False


def cluster_faults_as_redis_errors(
    call: Callable[_P, Awaitable[_T]],
) -> Callable[_P, Awaitable[_T]]:
    """redis-py's cluster client raises RedisClusterException, which is not a RedisError, when
    it cannot map a slot to a node or reach any node (mid-failover, a slot not covered), and
    under uvloop a write on a connection the node closed raises RuntimeError: every caller
    handles RedisError as "Redis unreachable" (a read goes to Postgres, the invalidator
    retries and widens to a flush), so that is what both become. Other RuntimeErrors pass."""

    @functools.wraps(call)
    async def translated(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await call(*args, **kwargs)
        except RedisClusterException as exc:
            raise RedisConnectionError(f"redis cluster: {exc}") from exc
        except RuntimeError as exc:
            if not _raised_writing_a_connection(exc):
                raise
            raise RedisConnectionError(f"redis cluster: connection closed: {exc}") from exc

    return translated


def run_id_of(info: Any) -> str:
    """The run_id from an `INFO server` reply (raw text from a connection, or parsed dict)."""
    if isinstance(info, dict):
        return str(info["run_id"])
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line.split(":", 1)[1].strip()
    raise ResponseError("INFO server reply without run_id")


class ServerIdentityCheck:
    """The per-connection restart check; counts what it saw (for metrics and tests)."""

    def __init__(self, keyspace: Keyspace, origin: str) -> None:
        self.keyspace = keyspace
        self.origin = origin
        self.checks = 0  # connections checked
        self.bumps = 0  # epoch bumps this process made because the server was new
        self.last_run_id = ""

    async def on_connect(self, connection: AbstractConnection) -> None:
        """redis_connect_func: handshake first (AUTH/SELECT/...), then the identity check."""
        await connection.on_connect()
        await connection.send_command("INFO", "server")
        run_id = run_id_of(await connection.read_response())
        ks = self.keyspace
        message = flush_message("redis server restarted", self.origin).encode()
        await connection.send_command(
            "EVAL",
            lua.ENSURE_SERVER,
            3,
            ks.server_identity,
            ks.epoch,
            ks.lsn_marker,
            run_id,
            ks.channel,
            message,
        )
        reply = await connection.read_response()
        self.checks += 1
        self.last_run_id = run_id
        if reply:
            self.bumps += 1
            log.warning(
                "redis server %s is new to namespace %s: epoch bumped to %s (every entry dead)",
                run_id[:12],
                ks.namespace,
                reply.decode() if isinstance(reply, bytes) else reply,
            )


def connect(
    url: str, keyspace: Keyspace, origin: str, *, cluster: bool = False, **kwargs: Any
) -> aioredis.Redis:
    """A redis.asyncio client whose every new connection is checked for a restarted server.

    origin ("api", "cdc", "worker") goes into the flush message of a bump; kwargs go to
    `Redis.from_url` (timeouts, retry, ...). cluster: a RedisCluster client instead (see the
    module doc).
    """
    if cluster:
        return cluster_client(url, **kwargs)
    check = ServerIdentityCheck(keyspace, origin)
    # a bound async method: redis-py awaits it (it tests asyncio.iscoroutinefunction)
    return aioredis.Redis.from_url(url, redis_connect_func=check.on_connect, **kwargs)


def cluster_client(url: str, **kwargs: Any) -> aioredis.Redis:
    """redis-py's asyncio RedisCluster for a URL naming any node.

    Typed as `Redis`: it offers the commands, scripts and pipelines pgbust uses with the same
    signatures, and keeps every caller one type."""
    client = RedisCluster.from_url(url, **kwargs)
    return client  # type: ignore[return-value]


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


async def shard_address(client: aioredis.Redis, channel: str) -> tuple[str, int]:
    """(host, port) of the master that serves `channel`'s slot now (sharded pub/sub: SPUBLISH
    reaches the subscribers of that shard only). The topology is read afresh: after a
    failover or a slot move the cached one may name a node that no longer owns it."""
    assert isinstance(client, RedisCluster)
    await client.nodes_manager.initialize()
    node = client.get_node_from_key(channel)
    if node is None:
        raise ResponseError(f"no node serves the slot of {channel!r}")
    return node.host, int(node.port)


def identity_check(client: aioredis.Redis) -> ServerIdentityCheck | None:
    """The check a client made by `connect` runs on each new connection (None otherwise)."""
    if is_cluster(client):
        return None
    hook = client.connection_pool.connection_kwargs.get("redis_connect_func")
    owner = getattr(hook, "__self__", None)
    return owner if isinstance(owner, ServerIdentityCheck) else None
