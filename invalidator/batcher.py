"""Merging many changes' targets into one batch (pure, no I/O).

Both capture modes apply the same rules, the declaration file's (pgbust.rules.explain).

The daemon drains every event already received, adds each one's targets here and sends the
batch as one Redis call; pending batches (Redis unreachable) keep merging into one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from invalidator.liveness import Probe
from invalidator.payload import Parsed
from pgbust.declaration import Declaration
from pgbust.protocol import Targets
from pgbust.rules import Change, explain

if TYPE_CHECKING:
    from invalidator.wal_source import WalBatch


@dataclass(slots=True)
class Batch:
    keys: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)
    flush: bool = False
    events: int = 0
    timestamps: list[int] = field(default_factory=list)  # trigger times (µs) of the events
    tables: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    reasons: list[str] = field(default_factory=list)  # why this batch flushes, if it does
    flush_kind: str | None = None  # low-cardinality label of the first reason to flush
    flush_causes: set[str] = field(default_factory=set)  # every such label merged in
    opened_us: int | None = None  # when the daemon took the batch's first event (wall clock)
    wal_lsn: int | None = None  # WAL capture: confirm the slot up to here once applied
    # WAL capture: the transactions of the batch, applied only once readers can see them
    wal_xids: set[int] = field(default_factory=set)
    probe: Probe | None = None  # the newest capture probe received with these events

    def add_probe(self, probe: Probe) -> None:
        """A probe that came back behind these events: once they are applied, capture is
        proven up to the moment it was sent (invalidator/liveness.py)."""
        if self.probe is None or probe.sent_at > self.probe.sent_at:
            self.probe = probe

    def __len__(self) -> int:
        return self.events

    def add(self, parsed: Parsed, declaration: Declaration) -> None:
        """Add one parsed NOTIFY event: its targets by the declared rules, its timestamp, its
        problem label."""
        self.events += 1
        if parsed.problem is not None:
            self.problems[parsed.problem] += 1
        self._add_change(parsed.change, declaration, parsed.problem, parsed.why, "")

    def add_wal(self, item: WalBatch, declaration: Declaration) -> None:
        """Add one committed transaction from the WAL; its problems were counted by the
        source, so only unusable rows are counted here."""
        self.wal_lsn = max(self.wal_lsn or 0, item.end_lsn)
        if item.xid is not None:
            self.wal_xids.add(item.xid)
        for change in item.changes:
            self.events += 1
            self._add_change(change, declaration, None, None, " (wal)")

    def _add_change(
        self,
        change: Change,
        declaration: Declaration,
        problem: str | None,
        why: str | None,
        source: str,
    ) -> None:
        self.tables[change.table] += 1
        if change.ts_us is not None:
            self.timestamps.append(change.ts_us)
        targets, unkeyable = explain(declaration, change)
        if unkeyable is not None and problem is None:
            self.problems[unkeyable] += 1  # well-formed, but a row without a usable key
        if targets.flush and not self.flush:
            if problem is not None:
                kind = "malformed"
            elif change.table_wide:
                kind = "table_wide"
            elif declaration.table(change.table) is None:
                kind = "unknown_table"
            else:
                kind = "unkeyable_row"
            self.flush_kind = kind
            self.flush_causes.add(kind)
            self.reasons.append(
                f"{problem or unkeyable or kind} change of {change.table}{source}"
                + (f" ({why})" if why else "")
            )
        self.add_targets(targets)

    def add_targets(self, targets: Targets) -> None:
        if self.flush:
            return  # a flush already covers everything
        if targets.flush:
            self.flush = True
            self.keys.clear()
            self.tags.clear()
            return
        self.keys |= targets.keys
        self.tags |= targets.tags

    def add_flush(self, kind: str, reason: str) -> None:
        """Everything is invalidated (lost notifications, reconnect, Redis back)."""
        if not self.flush:
            self.flush_kind = kind
        self.flush_causes.add(kind)
        self.reasons.append(reason)
        self.add_targets(Targets(flush=True))

    def merge(self, other: Batch) -> None:
        if other.wal_lsn is not None:
            self.wal_lsn = max(self.wal_lsn or 0, other.wal_lsn)
        self.wal_xids |= other.wal_xids
        self.events += other.events
        self.timestamps += other.timestamps
        self.tables.update(other.tables)
        self.problems.update(other.problems)
        self.reasons += other.reasons
        self.flush_causes |= other.flush_causes
        if not self.flush:
            self.flush_kind = other.flush_kind
        if other.probe is not None:
            self.add_probe(other.probe)
        self.add_targets(other.targets())

    def targets(self) -> Targets:
        return Targets(frozenset(self.keys), frozenset(self.tags), self.flush)

    @property
    def earliest_ts_us(self) -> int | None:
        return min(self.timestamps) if self.timestamps else None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons[:3])[:200]

    def __bool__(self) -> bool:
        return bool(self.events or self.flush or self.keys or self.tags)
