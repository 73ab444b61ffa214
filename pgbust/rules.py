"""Rules: which entries and tags one captured change invalidates, from the declaration (pure).

The invalidator applies them to every captured change; an application's own writes apply
the same rules (`Cache.wrote`) so that both always agree. A change carries, per row, the text
values of the table's key and depends columns, OLD and NEW, and which watched columns changed
(see pgbust.declaration for what a rule says).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pgbust.declaration import Declaration, Rule, Table
from pgbust.protocol import Targets
from pgbust.templates import text_of

EVERYTHING = Targets(flush=True)
RowKind = Literal["I", "U", "D", "?"]  # "?": from a capture that says nothing more (v1)
Values = Mapping[str, str | None]
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row of a change. INSERT has `new`, DELETE `old`, UPDATE both (same key);
    `changed` is the set of watched columns the update changed (None: unknown, assume all)."""

    kind: RowKind
    old: Values | None = None
    new: Values | None = None
    changed: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One captured change of a table. table_wide: any row may have changed (TRUNCATE, a
    statement over max_rows rows, a payload that could not be read in full). ts_us: when it
    happened (the trigger's clock, or the commit time from the WAL); lsn: the end LSN of the
    committing transaction when it came from the WAL (None from NOTIFY)."""

    table: str
    op: str
    rows: tuple[RowChange, ...] = ()
    table_wide: bool = False
    ts_us: int | None = None
    lsn: int | None = None


class Unkeyable(Exception):
    """A row whose key columns are missing or NULL; `reason` is a metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _values(table: Table, values: Values | None) -> dict[str, str | None]:
    if values is None:
        raise Unkeyable("unkeyable_missing_column")
    out: dict[str, str | None] = {}
    for column in table.key:
        if column not in values:
            raise Unkeyable("unkeyable_missing_column")
        value = values[column]
        if value is None:
            raise Unkeyable("unkeyable_null")
        if not isinstance(value, str):
            raise Unkeyable("unkeyable_not_text")
        out[column] = value
    for column in table.depends:
        value = values.get(column, _MISSING)
        if value is _MISSING:
            raise Unkeyable("unkeyable_missing_column")
        if value is not None and not isinstance(value, str):
            raise Unkeyable("unkeyable_not_text")
        out[column] = value
    return out


def _render(rule: Rule, values: dict[str, str | None]) -> str | None:
    """The rule's name for these values; None when a depends column it names is NULL (the
    row belongs to no such dependency)."""
    picked: dict[str, str] = {}
    for name in rule.template.names:
        value = values[name]
        if value is None:
            return None
        picked[name] = value
    return rule.template.render(picked)


def _row_names(table: Table, row: RowChange) -> Iterable[tuple[Rule, str]]:
    if row.kind in ("I", "D"):
        op = "insert" if row.kind == "I" else "delete"
        values = _values(table, row.new if row.kind == "I" else row.old)
        for rule in table.rules:
            if op in rule.when and (name := _render(rule, values)) is not None:
                yield rule, name
        return
    if row.kind == "?":
        values = _values(table, row.new if row.new is not None else row.old)
        for rule in table.rules:
            if (name := _render(rule, values)) is not None:
                yield rule, name
        return
    old, new = _values(table, row.old), _values(table, row.new)
    if any(old[column] != new[column] for column in table.key):
        # the row changed its identity: the old row is gone and a new one came
        for rule in table.rules:
            for values in (old, new):
                if (name := _render(rule, values)) is not None:
                    yield rule, name
        return
    for rule in table.rules:
        before, after = _render(rule, old), _render(rule, new)
        if before != after:
            # the row moved between dependencies: it left one and joined the other
            yield from ((rule, name) for name in (before, after) if name is not None)
        elif (
            after is not None
            and "update" in rule.when
            and (rule.columns is None or row.changed is None or rule.columns & row.changed)
        ):
            yield rule, after


def table_targets(table: Table, rows: Iterable[RowChange]) -> Targets:
    """The entries and tags these rows invalidate; raises Unkeyable for an unusable row."""
    keys: set[str] = set()
    tags: set[str] = set()
    for row in rows:
        for rule, name in _row_names(table, row):
            (keys if rule.kind == "entry" else tags).add(name)
    return Targets(frozenset(keys), frozenset(tags))


def explain(declaration: Declaration, change: Change) -> tuple[Targets, str | None]:
    """The targets of a change, and why its rows could not be keyed (if so). Undeclared
    tables, table-wide changes and unusable rows invalidate everything (never dropped)."""
    table = declaration.table(change.table)
    if table is None or change.table_wide:
        return EVERYTHING, None
    try:
        return table_targets(table, change.rows), None
    except Unkeyable as exc:
        return EVERYTHING, exc.reason


def targets_for(declaration: Declaration, change: Change) -> Targets:
    return explain(declaration, change)[0]


def write_change(
    table: str,
    op: Literal["insert", "update", "delete"],
    *,
    old: Mapping[str, Any] | None = None,
    new: Mapping[str, Any] | None = None,
    changed: Iterable[str] | None = None,
) -> Change:
    """A Change for an application's own write, from Python values (read-your-writes)."""

    def text(values: Mapping[str, Any] | None) -> dict[str, str | None] | None:
        if values is None:
            return None
        return {k: None if v is None else text_of(v) for k, v in values.items()}

    kind: RowKind = {"insert": "I", "update": "U", "delete": "D"}[op]  # type: ignore[assignment]
    if kind == "U" and (old is None or new is None):
        raise ValueError("an update needs old and new values")
    row = RowChange(
        kind,
        old=text(old),
        new=text(new),
        changed=None if changed is None else frozenset(changed),
    )
    return Change(table=table, op=op.upper(), rows=(row,))
