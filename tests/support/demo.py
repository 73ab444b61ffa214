"""The demo's declaration (pgbust.toml at the repository root), for tests that drive the
Redis protocol by hand: the tags every demo entry is filed under, as the API files them."""

from __future__ import annotations

from pathlib import Path

from pgbust import declaration

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "pgbust.toml"
DEMO = declaration.load(DEMO_CONFIG)


def demo_tags(entry: str) -> tuple[str, ...]:
    """The tags of a demo entry (pgbust.toml [entries."..."])."""
    return DEMO.resolve(entry)[1]
