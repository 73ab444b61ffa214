"""The verdict on a Redis server's version and memory settings (pure)."""

import pytest

from pgbust.errors import StartupError
from pgbust.redis_policy import classify, from_info, require_version


@pytest.mark.parametrize(
    ("policy", "maxmemory", "verdict"),
    [
        ("allkeys-lru", 1 << 30, "recommended"),
        ("allkeys-lfu", 1 << 30, "recommended"),
        ("noeviction", 1 << 30, "safe"),
        ("volatile-lru", 1 << 30, "safe"),
        ("volatile-ttl", 1 << 30, "safe"),
        ("allkeys-random", 1 << 30, "safe"),
        ("allkeys-lru", 0, "unbounded"),
        ("noeviction", 0, "unbounded"),
        ("some-future-policy", 1 << 30, "unknown"),
        (None, None, "unknown"),
    ],
)
def test_every_policy_gets_a_verdict(
    policy: str | None, maxmemory: int | None, verdict: str
) -> None:
    memory = classify("7.2.4", policy, maxmemory)
    assert memory.verdict == verdict
    assert memory.advice
    assert memory.policy == (policy or "unknown")


def test_noeviction_and_volatile_say_the_cache_stops_filling() -> None:
    for policy in ("noeviction", "volatile-lfu"):
        assert "stops filling" in classify("7.0.0", policy, 1 << 20).advice


def test_info_replies_are_read_as_redis_py_parses_them() -> None:
    memory = from_info(
        {"redis_version": "7.0.15"}, {"maxmemory_policy": "allkeys-lfu", "maxmemory": 104857600}
    )
    assert (memory.version, memory.policy, memory.maxmemory) == ("7.0.15", "allkeys-lfu", 104857600)
    assert memory.verdict == "recommended"
    assert "allkeys-lfu" in memory.line()
    restricted = from_info({}, {})  # INFO refused (some managed services)
    assert (restricted.version, restricted.verdict) == ("unknown", "unknown")


@pytest.mark.parametrize("version", ["6.2.14", "5.0.7", "6.9.9"])
def test_a_redis_older_than_7_refuses_to_start_naming_the_setting(version: str) -> None:
    with pytest.raises(StartupError, match=r"REDIS_URL is Redis .*7\.0 or newer"):
        require_version(classify(version, "allkeys-lru", 1 << 20))


@pytest.mark.parametrize("version", ["7.0.0", "7.2.4", "8.0.1", "unknown"])
def test_redis_7_and_newer_start(version: str) -> None:
    require_version(classify(version, "noeviction", 0))
