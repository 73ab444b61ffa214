"""Rules: which cache entries and tags one row change invalidates (pure, no I/O).

Used by the invalidator for every captured change and by the API's write path, so the two
always agree. To put a new table under invalidation: declare it in db/triggers (which
columns the keys depend on) and add its rule here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from api.keys import (
    category_pages_tag,
    category_summary_tag,
    product_entry,
    product_row_tag,
)
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
    # an UPDATE that changed no row's key columns (the trigger's "p"): every row kept its
    # identity and its dependencies, so what lists rows lists the same ones
    in_place: bool = False


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


# The same rules as pgbust.toml's (which WAL capture applies; tests/unit/test_rules.py holds
# the two together), for the NOTIFY payload: it says which key columns the rows had, OLD and
# NEW, and whether none changed ("p"), but not which other columns did.


def _product_rows(rows: Iterable[Row], in_place: bool) -> Targets:
    keys: set[str] = set()
    tags: set[str] = set()
    for row in rows:
        product_id, category_id = _key(row, "id"), _key(row, "category_id")
        keys.add(product_entry(product_id))
        tags.add(product_row_tag(product_id))  # the pages that show it
        tags.add(category_summary_tag(category_id))  # which columns changed is not known
        if not in_place:
            # inserted, deleted, moved or re-keyed: which products a page lists changes
            tags.add(category_pages_tag(category_id))
    return Targets(frozenset(keys), frozenset(tags))


def _category_rows(rows: Iterable[Row], in_place: bool) -> Targets:
    # pages and summaries show no category column: only a category that comes or goes
    # (404 <-> 200) changes them
    if in_place:
        return Targets()
    tags: set[str] = set()
    for row in rows:
        category_id = _key(row, "id")
        tags |= {category_pages_tag(category_id), category_summary_tag(category_id)}
    return Targets(tags=frozenset(tags))


# A rule raises Unkeyable for a row it cannot key: the change is then invalidated wider
# (everything), never dropped.
RULES: dict[str, Callable[[Iterable[Row], bool], Targets]] = {
    "products": _product_rows,
    "categories": _category_rows,
}


def explain(change: Change) -> tuple[Targets, str | None]:
    """The entries a change invalidates, and why its rows could not be keyed (if so)."""
    rule = RULES.get(change.table)
    if rule is None or change.table_wide:
        return EVERYTHING, None
    try:
        return rule(change.rows, change.in_place and change.op == "UPDATE"), None
    except Unkeyable as exc:
        return EVERYTHING, exc.reason


def targets_for(change: Change) -> Targets:
    """The entries a change invalidates. Unknown tables, table-wide changes and rows that
    cannot be keyed flush all."""
    return explain(change)[0]


def product_write_targets(product_id: int, *category_ids: int, op: str) -> Targets:
    """What an API write to one product touches (op INSERT, UPDATE or DELETE; an update
    names its old and new category): the same as the change the trigger will capture."""
    rows = [{"id": product_id, "category_id": category_id} for category_id in category_ids]
    in_place = op == "UPDATE" and len(set(category_ids)) == 1
    return targets_for(Change(table="products", op=op, rows=tuple(rows), in_place=in_place))
