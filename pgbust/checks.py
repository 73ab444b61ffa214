"""Start-up probes: a process that cannot reach a server says which setting and exits."""

from __future__ import annotations

import psycopg
import redis

from pgbust import redis_policy
from pgbust.errors import StartupError
from pgbust.redis_policy import RedisMemory
from pgbust.settings import redact_url


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def require_postgres(url: str, setting: str = "DATABASE_URL", timeout_s: int = 5) -> None:
    try:
        with psycopg.connect(url, connect_timeout=timeout_s) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise StartupError(
            f"cannot reach {setting} at {redact_url(url)}: {_first_line(exc)}"
        ) from None


def require_redis(url: str, setting: str = "REDIS_URL", timeout_s: float = 5.0) -> RedisMemory:
    """Reachable, and Redis 7.0+ (redis_policy); returns its memory settings."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
        return redis_policy.read_sync(client)
    except redis.RedisError as exc:
        raise StartupError(
            f"cannot reach {setting} at {redact_url(url)}: {_first_line(exc)}"
        ) from None
    finally:
        client.close()
