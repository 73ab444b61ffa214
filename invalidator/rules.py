"""Rules: which cache entries and tags one row change invalidates (pure, no I/O).

Used by the invalidator for every captured change and by the API's write path, so the two
always agree. To put a new table under invalidation: declare it in db/triggers (which
columns the keys depend on) and add its rule here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pgbust.keys import category_tag, product_entry
from pgbust.protocol import Targets

Row = Mapping[str, Any]
EVERYTHING = Targets(flush=True)


@dataclass(frozen=True, slots=True)
class Change:
    """One captured change: a table, an operation and the affected rows' key columns.

    rows holds the primary key and the dependency columns, from OLD and NEW alike (a row that
    moved between categories appears with both values). table_wide means "any row may have
    changed" (TRUNCATE, a bulk statement over the threshold, a payload we could not read).
    """

    table: str
    op: str
    rows: tuple[Row, ...] = ()
    table_wide: bool = False
    ts_us: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _product_rows(rows: Iterable[Row]) -> Targets:
    keys: set[str] = set()
    tags: set[str] = set()
    for row in rows:
        product_id, category_id = row.get("id"), row.get("category_id")
        if not isinstance(product_id, int) or not isinstance(category_id, int):
            return EVERYTHING  # a row we cannot key: invalidate wider, never drop
        keys.add(product_entry(product_id))
        tags.add(category_tag(category_id))
    return Targets(frozenset(keys), frozenset(tags))


def _category_rows(rows: Iterable[Row]) -> Targets:
    tags: set[str] = set()
    for row in rows:
        category_id = row.get("id")
        if not isinstance(category_id, int):
            return EVERYTHING
        tags.add(category_tag(category_id))
    return Targets(tags=frozenset(tags))


RULES: dict[str, Callable[[Iterable[Row]], Targets]] = {
    "products": _product_rows,
    "categories": _category_rows,
}


def targets_for(change: Change) -> Targets:
    """The entries a change invalidates. Unknown tables and table-wide changes flush all."""
    rule = RULES.get(change.table)
    if rule is None or change.table_wide:
        return EVERYTHING
    return rule(change.rows)


def product_write_targets(product_id: int, *category_ids: int) -> Targets:
    """What an API write to one product touches: its entry and its old and new category."""
    rows = [{"id": product_id, "category_id": category_id} for category_id in category_ids]
    return targets_for(Change(table="products", op="WRITE", rows=tuple(rows)))
