"""The demo's declaration (pgbust.toml at the repository root), for tests that drive the
Redis protocol by hand: the tags every demo entry is filed under, as the API files them."""

from __future__ import annotations

from pathlib import Path

from pgbust import declaration
from pgbust.protocol import Lease
from pgbust.redis_cache import RedisCache

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "pgbust.toml"
DEMO = declaration.load(DEMO_CONFIG)


def demo_tags(entry: str) -> tuple[str, ...]:
    """The tags of a demo entry (pgbust.toml [entries."..."])."""
    return DEMO.resolve(entry)[1]


async def fill(cache: RedisCache, entry: str, payload: bytes) -> None:
    """Lease and fill a demo entry by hand (no rows), asserting both succeed."""
    lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
    assert isinstance(lease, Lease), lease
    tags = demo_tags(entry)
    stored = await cache.fill(
        entry, lease.token, lease.stamp, payload, tags=tags, rows=(), since=lease.since
    )
    assert stored == 1
