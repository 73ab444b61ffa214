"""From decoded pgoutput messages to the Changes the rules read (pure, no I/O).

`Transactions` is fed every message of one replication session in order and hands back one
`Transaction` per COMMIT: the Changes of the declared tables (text values of key and depends
columns, OLD and NEW), the commit's end LSN (what the slot is confirmed up to once Redis
applied it) and its commit time. Never too narrow: whatever cannot be read in full widens.

- OLD values follow the table's REPLICA IDENTITY. FULL sends the whole old row; an index or
  the primary key sends its columns only when they changed ('K'), so a column of that identity
  absent from the message did not change. A key or depends column whose OLD value cannot be
  known (not in the identity, an unsent TOAST value) makes the change table-wide.
- `changed` (the watched columns an UPDATE changed) is given when OLD and NEW of every watched
  column are known, else None (the rules then assume every watched column changed).
- TRUNCATE -> table-wide. A table's schema changing under the session (its Relation message
  differs from the one before) -> table-wide: the table may have been rewritten without a row
  change. A `pgbust` logical message naming a table (pg_logical_emit_message) -> table-wide.
- A relation the declaration does not know (the publication holds more than it should), a
  message that could not be decoded, more rows of one table than its max_rows: widened and
  reported in `problems` (a metric label each), never dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pgbust import pgoutput as po
from pgbust.declaration import Declaration, Table
from pgbust.rules import Change, RowChange, RowKind

UNKNOWN_TABLE = "?"
MESSAGE_PREFIX = "pgbust"  # pg_logical_emit_message(true, 'pgbust', '<schema.table>')


@dataclass(frozen=True, slots=True)
class Transaction:
    changes: tuple[Change, ...]
    commit_lsn: int
    end_lsn: int  # confirm the slot up to here once the changes are applied
    commit_ts_us: int
    problems: tuple[str, ...] = ()  # metric labels: why something was widened
    # the transaction id (from BEGIN): its commit is in the WAL before it is visible to
    # readers, and the invalidation must wait for the latter (invalidator/visibility.py)
    xid: int | None = None

    @property
    def rows(self) -> int:
        return sum(len(c.rows) for c in self.changes)


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to read one relation's tuples: positions of the columns the declaration names."""

    relation: po.Relation
    table: Table | None  # None: not declared
    name: str  # as declared (or schema.table when undeclared)
    needed: tuple[tuple[str, int], ...]  # key + depends columns -> position
    watched: tuple[tuple[str, int], ...]
    missing: tuple[str, ...]  # declared columns the relation does not have
    full: bool  # REPLICA IDENTITY FULL
    identity: frozenset[int]  # positions of the identity columns


def _plan(relation: po.Relation, declaration: Declaration) -> _Plan:
    table = declaration.table(relation.qualified)
    positions = {column.name: i for i, column in enumerate(relation.columns)}
    identity = frozenset(i for i, column in enumerate(relation.columns) if column.identity)
    if table is None:
        return _Plan(relation, None, relation.qualified, (), (), (), False, identity)
    wanted = table.captured_columns
    missing = tuple(c for c in (*wanted, *table.watched) if c not in positions)
    return _Plan(
        relation,
        table,
        table.relation,
        tuple((c, positions[c]) for c in wanted if c in positions),
        tuple((c, positions[c]) for c in table.watched if c in positions),
        missing,
        relation.replica_identity == "f",
        identity,
    )


def _same_shape(a: po.Relation, b: po.Relation) -> bool:
    return (
        a.qualified == b.qualified
        and a.replica_identity == b.replica_identity
        and [(c.name, c.type_oid, c.type_modifier, c.identity) for c in a.columns]
        == [(c.name, c.type_oid, c.type_modifier, c.identity) for c in b.columns]
    )


class _Unknowable(Exception):
    """A value the change needs is not in the message."""


@dataclass
class _Open:
    """The transaction being received."""

    begin: po.Begin | None
    runs: list[tuple[str, RowKind, list[RowChange]]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    wide: dict[str, str] = field(default_factory=dict)  # table -> op of its table-wide change
    problems: list[str] = field(default_factory=list)

    def widen(self, table: str, op: str, problem: str | None = None) -> None:
        self.wide.setdefault(table, op)
        if problem is not None:
            self.problems.append(problem)


class Transactions:
    """Assembles one replication session's messages into committed transactions."""

    def __init__(self, declaration: Declaration) -> None:
        self.declaration = declaration
        self.plans: dict[int, _Plan] = {}
        self._open: _Open | None = None
        self._pending = _Open(None)  # widenings seen outside a transaction: go to the next one

    @property
    def in_transaction(self) -> bool:
        """Between a BEGIN and its COMMIT."""
        return self._open is not None

    # --- feeding ------------------------------------------------------------------------

    def feed(self, message: po.Decoded) -> Transaction | None:
        """One decoded message; returns the transaction it completes (at COMMIT), if any."""
        if isinstance(message, po.Begin):
            self._begin(message)
        elif isinstance(message, po.Commit):
            return self._commit(message)
        elif isinstance(message, po.Relation):
            self._relation(message)
        elif isinstance(message, po.Insert):
            self._row(message.relation_oid, "I", None, None, message.new)
        elif isinstance(message, po.Update):
            self._row(message.relation_oid, "U", message.old_kind, message.old, message.new)
        elif isinstance(message, po.Delete):
            self._row(message.relation_oid, "D", message.old_kind, message.old, None)
        elif isinstance(message, po.Truncate):
            for oid in message.relation_oids:
                plan = self.plans.get(oid)
                if plan is None:
                    self._current().widen(UNKNOWN_TABLE, "T", "unknown_relation")
                else:
                    problem = None if plan.table is not None else "undeclared_table"
                    self._current().widen(plan.name, "T", problem)
        elif isinstance(message, po.Message):
            self._logical_message(message)
        # Origin and Type carry nothing a cache needs (values are text)
        return None

    def malformed(self, reason: str) -> None:
        """A message could not be decoded: whatever it said, everything is invalidated."""
        self._current().widen(UNKNOWN_TABLE, "?", reason)

    # --- internals ----------------------------------------------------------------------

    def _current(self) -> _Open:
        return self._open if self._open is not None else self._pending

    def _begin(self, begin: po.Begin) -> None:
        if self._open is not None:  # a BEGIN without COMMIT: the protocol went wrong
            self._pending.widen(UNKNOWN_TABLE, "?", "begin_without_commit")
        pending = self._pending
        self._open = _Open(begin, wide=pending.wide, problems=pending.problems)
        self._pending = _Open(None)

    def _commit(self, commit: po.Commit) -> Transaction:
        tx = self._open
        if tx is None:  # the protocol went wrong: whatever this commit held is unknown
            tx = _Open(None)
            tx.widen(UNKNOWN_TABLE, "?", "commit_without_begin")
        self._open = None
        if self._pending.wide or self._pending.problems:
            tx.wide.update((t, o) for t, o in self._pending.wide.items() if t not in tx.wide)
            tx.problems += self._pending.problems
            self._pending = _Open(None)
        return Transaction(
            self._changes(tx, commit),
            commit.commit_lsn,
            commit.end_lsn,
            commit.commit_ts_us,
            tuple(tx.problems),
            tx.begin.xid if tx.begin is not None else None,
        )

    def _changes(self, tx: _Open, commit: po.Commit) -> tuple[Change, ...]:
        ts, lsn = commit.commit_ts_us, commit.end_lsn
        out = [
            Change(table, op, table_wide=True, ts_us=ts, lsn=lsn) for table, op in tx.wide.items()
        ]
        for table, kind, rows in tx.runs:
            if table not in tx.wide:
                out.append(Change(table, kind, tuple(rows), ts_us=ts, lsn=lsn))
        return tuple(out)

    def _relation(self, relation: po.Relation) -> None:
        before = self.plans.get(relation.oid)
        plan = _plan(relation, self.declaration)
        self.plans[relation.oid] = plan
        if before is not None and not _same_shape(before.relation, relation):
            self._current().widen(plan.name, "R", None if plan.table else "undeclared_table")

    def _logical_message(self, message: po.Message) -> None:
        if message.prefix != MESSAGE_PREFIX:
            return  # another application's message
        try:
            table = message.content.decode().strip()
        except UnicodeDecodeError:
            table = ""
        known = self.declaration.table(table) if table else None
        if known is None:
            self._current().widen(UNKNOWN_TABLE, "M", "bad_logical_message")
        else:
            self._current().widen(known.relation, "M")

    def _row(
        self,
        oid: int,
        kind: RowKind,
        old_kind: str | None,
        old: po.Tuple | None,
        new: po.Tuple | None,
    ) -> None:
        tx = self._current()
        plan = self.plans.get(oid)
        if plan is None:
            tx.widen(UNKNOWN_TABLE, kind, "unknown_relation")
            return
        if plan.table is None:
            if plan.name not in tx.wide:
                tx.widen(plan.name, kind, "undeclared_table")
            return
        if plan.name in tx.wide:
            return  # the whole table is invalidated anyway
        tx.counts[plan.name] += 1
        if tx.counts[plan.name] > plan.table.max_rows:
            tx.widen(plan.name, kind)  # a bulk change: one table-wide change, no row storm
            return
        if plan.missing:
            tx.widen(plan.name, kind, "missing_column")
            return
        try:
            row = _row_change(plan, kind, old_kind, old, new)
        except _Unknowable:
            tx.widen(plan.name, kind, "old_values_unknown")
            return
        if tx.runs and tx.runs[-1][0] == plan.name and tx.runs[-1][1] == kind:
            tx.runs[-1][2].append(row)
        else:
            tx.runs.append((plan.name, kind, [row]))


def _values(
    columns: Iterable[tuple[str, int]], values: po.Tuple, fallback: po.Tuple | None = None
) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, i in columns:
        if i >= len(values):
            raise _Unknowable(name)
        value = values[i]
        if value is po.UNCHANGED:
            if fallback is None or i >= len(fallback) or fallback[i] is po.UNCHANGED:
                raise _Unknowable(name)
            value = fallback[i]
        out[name] = value  # type: ignore[assignment]  # str | None once UNCHANGED is gone
    return out


def _old_values(
    plan: _Plan, columns: Iterable[tuple[str, int]], old_kind: str | None, old: po.Tuple | None,
    new: po.Tuple | None,
) -> dict[str, str | None]:  # fmt: skip
    """OLD values of these columns, from the old tuple or (identity unchanged) from NEW."""
    if old_kind == "O" and old is not None:
        return _values(columns, old)
    if plan.full:
        raise _Unknowable("no old row under REPLICA IDENTITY FULL")  # e.g. a partition's own
    out: dict[str, str | None] = {}
    for name, i in columns:
        if i not in plan.identity:
            raise _Unknowable(name)
        source = old if old_kind == "K" else new  # no 'K': the identity did not change
        if source is None:
            raise _Unknowable(name)
        out.update(_values(((name, i),), source))
    return out


def _row_change(
    plan: _Plan, kind: RowKind, old_kind: str | None, old: po.Tuple | None, new: po.Tuple | None
) -> RowChange:
    if kind == "I":
        assert new is not None
        return RowChange("I", new=_values(plan.needed, new))
    if kind == "D":
        return RowChange("D", old=_old_values(plan, plan.needed, old_kind, old, None))
    assert new is not None
    before = _old_values(plan, plan.needed, old_kind, old, new)
    after = _values(plan.needed, new, old if old_kind == "O" else None)
    return RowChange("U", old=before, new=after, changed=_changed(plan, old_kind, old, new))


def _changed(
    plan: _Plan, old_kind: str | None, old: po.Tuple | None, new: po.Tuple
) -> frozenset[str] | None:
    if not plan.watched:
        return frozenset()
    try:
        before = _old_values(plan, plan.watched, old_kind, old, new)
        after = _values(plan.watched, new, old if old_kind == "O" else None)
    except _Unknowable:
        return None
    return frozenset(name for name in after if before[name] != after[name])
