"""Every cache key, tag and channel name, in one place (pure, no I/O).

An *entry* is a logical cache item ("product:42"); the Redis key that holds it is
"<ns>:v:<entry>". Entries that depend on a whole category carry a *tag* of that category; a
tag is invalidated in O(1) by bumping its generation, which is part of every tagged entry's
stamp. The names agree with the declaration file (pgbust.toml), which the invalidator applies.

A page is filed under "category:<id>:pages" (what changes which products it lists: a product
inserted, deleted or moved) and under the *row tag* of every product it holds
("row:products:<id>", bumped by any change of that product), so an UPDATE in place kills the
pages that show the product and no other. A summary is filed under "category:<id>:summary".
"""

from __future__ import annotations

from dataclasses import dataclass


def product_entry(product_id: int) -> str:
    return f"product:{product_id}"


def category_page_entry(category_id: int, limit: int, offset: int) -> str:
    return f"category:{category_id}:products:{limit}:{offset}"


def category_summary_entry(category_id: int) -> str:
    return f"category:{category_id}:summary"


def category_pages_tag(category_id: int) -> str:
    return f"category:{category_id}:pages"


def category_summary_tag(category_id: int) -> str:
    return f"category:{category_id}:summary"


def product_row_tag(product_id: int) -> str:
    return f"row:products:{product_id}"


def tag_of(entry: str) -> str | None:
    """The tag an entry is filed under by its name: a category's pages or its summary."""
    if entry.startswith("category:"):
        parts = entry.split(":", 3)
        if len(parts) >= 3:
            return f"category:{parts[1]}:{'summary' if parts[2] == 'summary' else 'pages'}"
    return None


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Redis key names of one namespace; several deployments can share one Redis."""

    namespace: str

    @property
    def epoch(self) -> str:
        return f"{self.namespace}:epoch"

    @property
    def server_identity(self) -> str:
        return f"{self.namespace}:server_run_id"

    @property
    def channel(self) -> str:
        return f"{self.namespace}:invalidations"

    @property
    def capture_alive(self) -> str:
        """Set (with a short TTL) by the active invalidator while its capture channel is proven
        alive; readers serve and fill Redis only while it exists."""
        return f"{self.namespace}:capture:alive"

    @property
    def hot(self) -> str:
        """Sorted set of sampled read counts per entry, for refresh-ahead warming."""
        return f"{self.namespace}:hot"

    def value(self, entry: str) -> str:
        return f"{self.namespace}:v:{entry}"

    def lease(self, entry: str) -> str:
        return f"{self.namespace}:l:{entry}"

    def tag_generation(self, tag: str) -> str:
        return f"{self.namespace}:g:{tag}"

    def tag_members(self, tag: str) -> str:
        return f"{self.namespace}:t:{tag}"

    def tag_of_generation(self, generation_key: str) -> str:
        return generation_key.removeprefix(f"{self.namespace}:g:")

    def entry_of(self, value_key: str) -> str:
        return value_key.removeprefix(f"{self.namespace}:v:")

    @property
    def value_pattern(self) -> str:
        return f"{self.namespace}:v:*"
