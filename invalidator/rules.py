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


# Keys are bigint columns: a value outside this range cannot be a row's key.
_BIGINT = range(-(2**63), 2**63)


class Unkeyable(Exception):
    """A row whose key columns cannot be read; `reason` is a low-cardinality metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _key(row: Row, column: str) -> int:
    if column not in row:
        raise Unkeyable("unkeyable_missing_column")
    value = row[column]
    if value is None:
        raise Unkeyable("unkeyable_null")
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unkeyable("unkeyable_not_integer")
    if value not in _BIGINT:
        raise Unkeyable("unkeyable_out_of_range")
    return value


def _product_rows(rows: Iterable[Row]) -> Targets:
    keys: set[str] = set()
    tags: set[str] = set()
    for row in rows:
        keys.add(product_entry(_key(row, "id")))
        tags.add(category_tag(_key(row, "category_id")))
    return Targets(frozenset(keys), frozenset(tags))


def _category_rows(rows: Iterable[Row]) -> Targets:
    return Targets(tags=frozenset(category_tag(_key(row, "id")) for row in rows))


# A rule raises Unkeyable for a row it cannot key: the change is then invalidated wider
# (everything), never dropped.
RULES: dict[str, Callable[[Iterable[Row]], Targets]] = {
    "products": _product_rows,
    "categories": _category_rows,
}


def explain(change: Change) -> tuple[Targets, str | None]:
    """The entries a change invalidates, and why its rows could not be keyed (if so)."""
    rule = RULES.get(change.table)
    if rule is None or change.table_wide:
        return EVERYTHING, None
    try:
        return rule(change.rows), None
    except Unkeyable as exc:
        return EVERYTHING, exc.reason


def targets_for(change: Change) -> Targets:
    """The entries a change invalidates. Unknown tables, table-wide changes and rows that
    cannot be keyed flush all."""
    return explain(change)[0]


def product_write_targets(product_id: int, *category_ids: int) -> Targets:
    """What an API write to one product touches: its entry and its old and new category."""
    rows = [{"id": product_id, "category_id": category_id} for category_id in category_ids]
    return targets_for(Change(table="products", op="WRITE", rows=tuple(rows)))
