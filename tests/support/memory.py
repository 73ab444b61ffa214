"""Memory pressure on a private redis-server: real LRU eviction, and a Redis that is full.

Eviction is made to hit chosen keys without luck: the victims are given a very long idle time
(RESTORE ... IDLETIME), the filler an intermediate one, and the keys that must survive are touched
between filler batches, so under allkeys-lru Redis evicts the victims first and the survivors
last. Nothing here sleeps; every loop is bounded by the bytes it may write.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Sequence

import redis

FILLER = "pressure:"  # outside every pgbust namespace
VICTIM_IDLE_S = 1_000_000
FILLER_IDLE_S = 5_000
_serial = itertools.count()  # filler key names, unique across calls


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def evicted_keys(client: redis.Redis) -> int:
    return int(client.info("stats")["evicted_keys"])


def limit_memory(client: redis.Redis, policy: str, headroom_bytes: int) -> int:
    """maxmemory = what is used now + headroom, under `policy`; returns the limit."""
    limit = used_memory(client) + headroom_bytes
    client.config_set("maxmemory-policy", policy)
    client.config_set("maxmemory", limit)
    return limit


def unlimit_memory(client: redis.Redis, policy: str = "noeviction") -> None:
    """No limit again, and the filler gone."""
    client.config_set("maxmemory", 0)
    client.config_set("maxmemory-policy", policy)
    batch: list[bytes] = []
    for key in client.scan_iter(match=FILLER + "*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


def age(client: redis.Redis, keys: Iterable[str], idle_s: int = VICTIM_IDLE_S) -> list[str]:
    """Make keys look unused for idle_s (what LRU eviction looks at); returns those that exist."""
    aged = []
    for key in keys:
        dump = client.dump(key)
        if dump is None:
            continue
        ttl_ms = max(0, int(client.pttl(key)))
        client.restore(key, ttl_ms, dump, replace=True, idletime=idle_s)
        aged.append(key)
    return aged


def _filler_payload(client: redis.Redis, value_bytes: int) -> bytes:
    template = FILLER + "template"
    client.set(template, os.urandom(value_bytes // 2).hex())
    dump = client.dump(template)
    client.delete(template)
    assert isinstance(dump, bytes)
    return dump


def _write_filler(client: redis.Redis, payload: bytes, idle_s: int, count: int = 32) -> None:
    with client.pipeline(transaction=False) as pipe:
        for _ in range(count):
            pipe.restore(f"{FILLER}{next(_serial)}", 0, payload, idletime=idle_s)
        pipe.execute()


def evict_by_pressure(
    client: redis.Redis,
    victims: Sequence[str],
    *,
    keep: Sequence[str] = (),
    value_bytes: int = 1024,
    max_bytes: int = 64 << 20,
) -> int:
    """Write filler until Redis itself (allkeys-lru, limit already set) has evicted every
    victim; `keep` keys are touched between batches so they stay the most recently used.
    Returns how many keys Redis evicted meanwhile."""
    assert str(client.config_get("maxmemory-policy")["maxmemory-policy"]).startswith("allkeys-")
    assert int(str(client.config_get("maxmemory")["maxmemory"])) > 0
    before = evicted_keys(client)
    age(client, victims)
    payload = _filler_payload(client, value_bytes)
    written = 0
    while any(client.exists(victim) for victim in victims):
        assert written < max_bytes, f"{victims} not evicted after {written} bytes of filler"
        _write_filler(client, payload, FILLER_IDLE_S)
        written += 32 * value_bytes
        if keep:
            client.touch(*keep)
    return evicted_keys(client) - before


def press(client: redis.Redis, total_bytes: int, value_bytes: int = 1024) -> int:
    """Write total_bytes of fresh filler (idle 0): Redis evicts whatever its policy picks
    among everything, the least recently used first under allkeys-lru. Returns how many keys
    it evicted."""
    before = evicted_keys(client)
    payload = _filler_payload(client, value_bytes)
    for _ in range(max(1, total_bytes // (32 * value_bytes))):
        _write_filler(client, payload, 0)
    return evicted_keys(client) - before


def fill_until_full(
    client: redis.Redis,
    value_bytes: int = 4096,
    max_keys: int = 200_000,
    squeeze_bytes: int = 256 << 10,
) -> int:
    """SET filler keys until Redis (noeviction, limit set) refuses with OOM; returns how many
    were stored. Then the limit is lowered `squeeze_bytes` below what is used: a Redis at its
    limit still takes a write that happens to fit, one over it refuses every write that may
    grow memory, whatever its size, until that much has been freed."""
    payload = os.urandom(value_bytes // 2).hex()
    stored = 0
    with contextlib.suppress(redis.exceptions.OutOfMemoryError):
        while stored < max_keys:
            client.set(f"{FILLER}{next(_serial)}", payload)
            stored += 1
    assert stored < max_keys, "Redis never refused a write: no maxmemory or an eviction policy?"
    client.config_set("maxmemory", max(1, used_memory(client) - squeeze_bytes))
    return stored


def is_full(client: redis.Redis) -> bool:
    """A write that needs memory is refused with OOM right now."""
    try:
        client.set(FILLER + "probe", "x")
    except redis.exceptions.OutOfMemoryError:
        return True
    client.delete(FILLER + "probe")
    return False
