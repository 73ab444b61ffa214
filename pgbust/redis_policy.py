"""What pgbust needs from the Redis server, checked by every component when it starts.

Required: Redis 7.0 or newer (the cache protocol's scripts declare script flags, a Redis 7
feature; an older server cannot load them). Every maxmemory-policy keeps the cache fresh (an
evicted key is survived and a full Redis still invalidates, pgbust/lua.py), so none makes a
component refuse to start; they do not cache equally well, so the policy is classified, logged
(a warning unless recommended) and exported as a metric:

- recommended: allkeys-lru, allkeys-lfu: cold entries make room, the cache keeps filling.
- safe: noeviction: a full Redis refuses writes; invalidation still works, the cache stops
  filling until memory is freed. volatile-*: only keys with a TTL are evicted and cdc values
  have none (PGBUST_CACHE_TTL_S=0), so it behaves like noeviction. allkeys-random: hot keys go
  as readily as cold ones; an evicted epoch empties the namespace.
- unbounded: maxmemory 0: Redis grows until the host runs out of memory.
- unknown: INFO did not say (restricted on some managed services).

Pure parsing and classification, plus one small reader per client kind. The settings come
from INFO (server, memory), which managed services allow where CONFIG GET is disabled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import redis
import redis.asyncio as aioredis

from pgbust.errors import StartupError

log = logging.getLogger(__name__)

Verdict = Literal["recommended", "safe", "unbounded", "unknown"]
MIN_VERSION = (7, 0)

_ADVICE = {
    "recommended": "evicts cold entries when memory runs out; the cache keeps filling",
    "noeviction": "when memory runs out invalidation still works but the cache stops filling "
    "(fills refused) until memory is freed; allkeys-lru or allkeys-lfu is recommended",
    "volatile": "only keys with a TTL are evicted; cdc values have none unless "
    "PGBUST_CACHE_TTL_S > 0, so a full Redis behaves like noeviction (the cache stops "
    "filling); allkeys-lru or allkeys-lfu is recommended",
    "allkeys-random": "evicts hot keys as readily as cold ones: each eviction of the epoch "
    "empties the whole namespace; allkeys-lru or allkeys-lfu is recommended",
    "unbounded": "no maxmemory: Redis grows until the host runs out of memory; set maxmemory "
    "with allkeys-lru or allkeys-lfu",
    "unknown": "could not read maxmemory-policy: make sure it is allkeys-lru or allkeys-lfu "
    "(any policy keeps the cache fresh)",
}


@dataclass(frozen=True, slots=True)
class RedisMemory:
    """The server's version and memory settings, and what they mean for pgbust."""

    version: str
    policy: str  # "allkeys-lru", ..., or "unknown"
    maxmemory: int | None  # bytes, 0 = no limit, None = unknown
    verdict: Verdict
    advice: str

    def line(self) -> str:
        limit = "unknown" if self.maxmemory is None else str(self.maxmemory)
        return (
            f"redis {self.version}: maxmemory-policy {self.policy}, maxmemory {limit} "
            f"({self.verdict}: {self.advice})"
        )


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def classify(version: str, policy: str | None, maxmemory: int | None) -> RedisMemory:
    """Pure: the verdict for a server's version, maxmemory-policy and maxmemory."""
    if policy is None or maxmemory is None:
        return RedisMemory(version, policy or "unknown", maxmemory, "unknown", _ADVICE["unknown"])
    if maxmemory == 0:
        return RedisMemory(version, policy, 0, "unbounded", _ADVICE["unbounded"])
    if policy in {"allkeys-lru", "allkeys-lfu"}:
        return RedisMemory(version, policy, maxmemory, "recommended", _ADVICE["recommended"])
    if policy.startswith("volatile-"):
        return RedisMemory(version, policy, maxmemory, "safe", _ADVICE["volatile"])
    if policy in {"noeviction", "allkeys-random"}:
        return RedisMemory(version, policy, maxmemory, "safe", _ADVICE[policy])
    return RedisMemory(version, policy, maxmemory, "unknown", _ADVICE["unknown"])


def from_info(server: Mapping[str, Any], memory: Mapping[str, Any]) -> RedisMemory:
    """Pure: a RedisMemory from parsed `INFO server` and `INFO memory` replies."""
    version = str(server.get("redis_version", "unknown"))
    policy = memory.get("maxmemory_policy")
    raw_limit = memory.get("maxmemory")
    try:
        maxmemory = int(raw_limit) if raw_limit is not None else None
    except (TypeError, ValueError):
        maxmemory = None
    return classify(version, str(policy) if policy is not None else None, maxmemory)


def require_version(facts: RedisMemory, setting: str = "REDIS_URL") -> None:
    """Refuse to start on a Redis the scripts cannot run on."""
    if facts.version == "unknown":
        return
    if _version_tuple(facts.version) < MIN_VERSION:
        raise StartupError(
            f"{setting} is Redis {facts.version}; pgbust needs Redis 7.0 or newer "
            "(its Lua scripts declare script flags, so they run on a full Redis)"
        )


def log_verdict(facts: RedisMemory, component: str) -> None:
    """One line at start: INFO when recommended, else WARNING."""
    level = logging.INFO if facts.verdict == "recommended" else logging.WARNING
    log.log(level, "%s: %s", component, facts.line())


def read_sync(client: redis.Redis) -> RedisMemory:
    """INFO server + INFO memory (sync); raises StartupError on a Redis older than 7.0."""
    facts = from_info(_info(client, "server"), _info(client, "memory"))
    require_version(facts)
    return facts


async def read(client: aioredis.Redis) -> RedisMemory:
    """The same for an asyncio client (for the log line, metrics and /healthz of a running
    component): never raises; INFO refused or Redis unreachable gives "unknown"."""
    try:
        server = await client.info("server")
    except redis.RedisError:
        server = {}
    try:
        memory = await client.info("memory")
    except redis.RedisError:
        memory = {}
    return from_info(server, memory)


def _info(client: redis.Redis, section: str) -> Mapping[str, Any]:
    try:
        reply = client.info(section)
    except redis.ResponseError:  # INFO restricted (some managed services): unknown
        return {}
    return reply if isinstance(reply, Mapping) else {}
