"""Gathers what `python -m pgbust status` shows, read-only, from Postgres and Redis.

Postgres: one connection with default_transaction_read_only = on (a write would fail), plain
SELECTs only (db/status.sql, the capture_status view, pg_replication_slots). Redis: read
commands only (INFO, GET, PTTL, TIME, PUBSUB NUMSUB, CLIENT LIST; on a cluster CLUSTER SLOTS,
PUBSUB SHARDNUMSUB, SSUBSCRIBE). Each server that cannot be read is recorded as an error; the
other's facts are still shown.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
import redis

from db import capture, wal
from db import status as status_sql
from db.settings import DbSettings
from pgbust import declaration, redis_policy
from pgbust.keys import ClusterNames, Keyspace
from pgbust.protocol import Heartbeat, MessageError, decode_message
from pgbust.status import Audit, Invalidators, RedisState, Slot, Status, Table

API_SUBSCRIBER_NAME = "pgbust-api-subscriber"  # api/subscriber.py's CLIENT_NAME
_TIMEOUT_S = 5


def gather(settings: DbSettings, listen_s: float = 1.5) -> Status:
    status = Status(namespace=settings.namespace, capture=settings.capture)
    leaders: tuple[Any, ...] | None = None
    standbys: list[str] = []
    try:
        with _connect(settings.database_url) as conn:
            leaders, standbys = _leadership(conn, settings.namespace)
            _capture(conn, settings, status)
    except psycopg.Error as exc:
        status.errors.append(f"postgres: {_first_line(exc)}")
    alive: tuple[str | None, int | None] = (None, None)
    beat: Heartbeat | None = None
    try:
        keyspace = Keyspace(settings.namespace, cluster=settings.redis_cluster)
        with _redis_clients(settings.redis_url, keyspace) as (client, node):
            status.redis = _redis(client, node, keyspace)  # counts subscribers before listening
            alive = _alive(client, keyspace)
            status.audit = _audit(client, keyspace)
            beat = _one_heartbeat(node, keyspace, listen_s) if alive[0] else None
    except redis.RedisError as exc:
        status.errors.append(f"redis: {_first_line(exc)}")
    if not any(e.startswith("postgres") for e in status.errors):
        status.invalidators = Invalidators(
            active_pid=leaders[1] if leaders else None,
            active_addr=leaders[6] if leaders else None,
            beat_age_s=leaders[3] if leaders else None,
            listener_connected=bool(leaders[5]) if leaders else False,
            standbys=standbys,
            alive_sender=alive[0],
            alive_ttl_ms=alive[1],
            proof_age_ms=beat.proof_age_ms if beat else None,
            beat_every_ms=beat.every_ms if beat else None,
        )
    return status


def _connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=_TIMEOUT_S,
        application_name="pgbust-status",
        options=f"-c default_transaction_read_only=on -c statement_timeout={_TIMEOUT_S * 1000}",
    )


def _leadership(
    conn: psycopg.Connection[tuple[Any, ...]], namespace: str
) -> tuple[tuple[Any, ...] | None, list[str]]:
    """The active invalidator's row (lock_id, holder_pid, beat_pid, beat_age_s, listener_pid,
    listener_connected, holder_addr) or None, and the standbys."""
    has_table = conn.execute(status_sql.query("has_heartbeat_table")).fetchone()
    if not (has_table and has_table[0]):
        return None, []
    rows = conn.execute(status_sql.query("leaders"), {"namespace": namespace}).fetchall()
    active = next((row for row in rows if row[1] is not None), None)
    standbys = [f"{addr} backend {pid}" for pid, addr in conn.execute(status_sql.query("standbys"))]
    return active, standbys


def _capture(
    conn: psycopg.Connection[tuple[Any, ...]], settings: DbSettings, status: Status
) -> None:
    if settings.capture == "notify":
        rows = capture.status(conn)
        status.tables = [Table(r.relation, r.captured, r.problems) for r in rows]
        status.ddl_problem = capture.ddl_problem(rows)
        return
    # wal: a declared table is captured when the publication carries it with REPLICA IDENTITY
    # FULL (its updates carry the old row); the slot says how far behind the consumer is.
    published = set(wal.published_tables(conn, settings.publication_name))
    not_full = dict(wal.tables_without_full_identity(conn, published)) if published else {}
    for relation in declaration.load().tables:
        problems = []
        if _qualified(relation) not in published:
            problems.append(f"not in publication {settings.publication_name}")
        if relation in not_full or _qualified(relation) in not_full:
            problems.append("replica identity is not FULL")
        status.tables.append(Table(relation, not problems, problems))
    slot = wal.slot_status(conn, settings.slot_name)
    status.slot = (
        Slot(settings.slot_name, exists=False)
        if slot is None
        else Slot(
            slot.slot,
            exists=True,
            active=slot.active,
            lag_bytes=slot.lag_bytes,
            wal_status=slot.wal_status,
            safe_wal_size=slot.safe_wal_size,
        )
    )


def _qualified(relation: str) -> str:
    return relation if "." in relation else f"public.{relation}"


@contextmanager
def _redis_clients(url: str, keyspace: Keyspace) -> Iterator[tuple[Any, redis.Redis]]:
    """(a client for the namespace's keys, a client of the server of its channel). One Redis:
    the same client twice. A cluster: redis-py's cluster client, which routes each key to its
    slot's master, and a plain client of the master serving the channel's slot: its sharded
    subscribers, its heartbeats, its slot's epoch, and the memory facts of that node."""
    t = _TIMEOUT_S
    if not keyspace.cluster:
        with redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t) as client:
            yield client, client
        return
    with redis.RedisCluster.from_url(url, socket_timeout=t, socket_connect_timeout=t) as cluster:
        # the node's own client, made by the cluster client with the URL's credentials
        yield cluster, cluster.get_redis_connection(cluster.get_node_from_key(keyspace.channel))


def _epoch_key(keyspace: Keyspace) -> str:
    """On a cluster each slot has its epoch (a flush bumps them all): the channel slot's."""
    if not keyspace.cluster:
        return keyspace.epoch
    return ClusterNames(keyspace.namespace).epoch_of(keyspace.channel)


def _redis(client: Any, node: redis.Redis, keyspace: Keyspace) -> RedisState:
    server, memory_info = _info(node, "server"), _info(node, "memory")
    stats = _info(node, "stats")
    memory = redis_policy.from_info(server, memory_info)
    raw_epoch = client.get(_epoch_key(keyspace))
    seconds, micros = node.time()
    epoch = int(raw_epoch) if raw_epoch else None
    if keyspace.cluster:  # sharded pub/sub: subscribers are counted by the channel's shard
        numsub = dict(node.pubsub_shardnumsub(keyspace.channel))
    else:
        numsub = dict(node.pubsub_numsub(keyspace.channel))
    channel = keyspace.channel.encode()
    subscribers = int(numsub.get(channel, numsub.get(keyspace.channel, 0)))
    return RedisState(
        version=memory.version,
        policy=memory.policy,
        verdict=memory.verdict,
        advice=memory.advice,
        maxmemory=memory.maxmemory,
        used_memory=_int(memory_info.get("used_memory")),
        evicted_keys=_int(stats.get("evicted_keys")),
        epoch=epoch,
        epoch_age_s=(seconds + micros / 1e6 - epoch / 1e6) if epoch else None,
        subscribers=subscribers,
        subscriber_clients=_subscriber_clients(node),
    )


def _alive(client: Any, keyspace: Keyspace) -> tuple[str | None, int | None]:
    sender = client.get(keyspace.capture_alive)
    if sender is None:
        return None, None
    ttl = int(client.pttl(keyspace.capture_alive))
    text = sender.decode(errors="replace") if isinstance(sender, bytes) else str(sender)
    return text, ttl if ttl >= 0 else None


def _one_heartbeat(client: redis.Redis, keyspace: Keyspace, listen_s: float) -> Heartbeat | None:
    """The first heartbeat heard on the channel within listen_s (SUBSCRIBE: reads only)."""
    deadline = time.monotonic() + listen_s
    kind = "smessage" if keyspace.cluster else "message"
    with client.pubsub(ignore_subscribe_messages=True) as pubsub:  # type: ignore[no-untyped-call]
        if keyspace.cluster:  # SSUBSCRIBE on the channel's shard (client is that master's)
            pubsub.ssubscribe(keyspace.channel)
        else:
            pubsub.subscribe(keyspace.channel)
        while (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=left)
            if message is None or message.get("type") != kind:
                continue
            try:
                decoded = decode_message(message["data"])
            except MessageError:
                continue
            if isinstance(decoded, Heartbeat):
                return decoded
    return None


def _audit(client: Any, keyspace: Keyspace) -> Audit | None:
    raw = client.get(keyspace.worker_audit)
    if not raw:
        return None
    report: dict[str, Any] = orjson.loads(raw)
    at = float(report.get("at", 0.0))
    return Audit(
        at=at,
        age_s=max(0.0, time.time() - at),
        checked=int(report.get("checked", 0)),
        stale=int(report.get("stale", 0)),
        ratio=float(report.get("ratio", 0.0)),
    )


def _subscriber_clients(client: redis.Redis) -> list[str]:
    """pgbust API subscriber connections on this Redis (CLIENT LIST says no channel names, so
    these are every namespace's; PUBSUB NUMSUB counts this namespace's)."""
    try:
        clients = client.client_list(_type="pubsub")
    except redis.ResponseError:  # CLIENT LIST disabled (some managed services)
        return []
    return [f"{c['addr']} age={c['age']}s" for c in clients if c.get("name") == API_SUBSCRIBER_NAME]


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    try:
        reply = client.info(section)
    except redis.ResponseError:
        return {}
    return dict(reply) if isinstance(reply, dict) else {}


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, str, float)) else None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]
