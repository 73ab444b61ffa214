"""Is every declared table really captured? (pgbust.capture_status, db/triggers/10_capture.sql)

The active invalidator reads the status of the tables on its channel from its lock connection
every PGBUST_CAPTURE_CHECK_S. Two things make it flush (bump the epoch):

* a table that is NOT captured (a capture trigger disabled or enabled for replica writes only,
  a partition without triggers, the triggers removed): any of its rows may change without a
  notification, so every check flushes while it lasts, and once more when it is captured
  again. Staleness is then bounded by the check interval instead of unbounded.
* a table whose fingerprint changed (rewritten, a partition attached, detached or dropped, a
  capture trigger re-created, disabled or re-enabled): rows may have changed without a row
  trigger. The DDL event triggers announce these at once; this check sees them within one
  interval, also where the event triggers could not be created (no superuser).

Both are logged (ERROR / WARNING) and shown as pgbust_invalidator_capture_ok{table} and
pgbust_invalidator_capture_ddl_ok. `observe` is pure; `CaptureWatch` does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors

from invalidator.listener import FlushRequest
from invalidator.metrics import Metrics

log = logging.getLogger(__name__)

QUERY = """
SELECT relation, captured, problems, fingerprint, ddl_problem
FROM pgbust.capture_status WHERE channel = %s
"""
Fetch = Callable[[str, tuple[Any, ...]], Awaitable[list[tuple[Any, ...]]]]


@dataclass(frozen=True, slots=True)
class TableCapture:
    relation: str
    captured: bool
    problems: tuple[str, ...] = ()
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    tables: tuple[TableCapture, ...]
    ddl_problem: str | None = None

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[Any, ...]]) -> Report:
        tables = tuple(TableCapture(str(r[0]), bool(r[1]), tuple(r[2] or ()), r[3]) for r in rows)
        return cls(tables, next((r[4] for r in rows if r[4]), None))


@dataclass(slots=True)
class Verdict:
    flush: FlushRequest | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _problems(table: TableCapture) -> str:
    shown = "; ".join(table.problems[:3])
    more = len(table.problems) - 3
    return shown + (f"; and {more} more" if more > 0 else "")


def observe(previous: Report | None, current: Report, interval_s: float) -> Verdict:
    """What a new status report means, given the previous one (None: first of the term,
    taken before the term's LISTEN, whose own flush covers everything older)."""
    verdict = Verdict()
    before = {t.relation: t for t in previous.tables} if previous is not None else {}
    not_captured: list[str] = []
    changed: list[str] = []
    for table in current.tables:
        old = before.get(table.relation)
        if not table.captured:
            not_captured.append(table.relation)
            if old is None or old.captured or old.problems != table.problems:
                verdict.errors.append(
                    f"{table.relation} is NOT captured: {_problems(table)}; its changes may "
                    f"not be announced, so everything is flushed every {interval_s:g} s "
                    "until it is (`python -m db triggers status`)"
                )
        elif previous is not None and old is None:
            changed.append(table.relation)
            verdict.warnings.append(f"{table.relation} is now declared and captured: flushing")
        elif previous is not None and old is not None and not old.captured:
            changed.append(table.relation)
            verdict.warnings.append(
                f"{table.relation} is captured again: flushing once more (its changes while "
                "it was not may not have been announced)"
            )
        elif old is not None and old.fingerprint != table.fingerprint:
            changed.append(table.relation)
            verdict.warnings.append(
                f"capture of {table.relation} changed (table rewritten, partitions attached, "
                "detached or dropped, capture triggers re-created, disabled or re-enabled): "
                "flushing, rows may have changed without a trigger"
            )
    if current.ddl_problem and (previous is None or not previous.ddl_problem):
        verdict.warnings.append(current.ddl_problem)
    if previous is not None and previous.ddl_problem and not current.ddl_problem:
        verdict.warnings.append("the DDL event triggers are in place again")
    if previous is not None and not_captured:
        verdict.flush = FlushRequest(
            "not_captured", f"not captured: {', '.join(not_captured)}"[:200]
        )
    elif changed:
        verdict.flush = FlushRequest("capture_changed", f"capture changed: {', '.join(changed)}")
    return verdict


class CaptureWatch:
    def __init__(self, channel: str, metrics: Metrics, interval_s: float) -> None:
        self.channel = channel
        self.metrics = metrics
        self.interval_s = interval_s
        self.report: Report | None = None  # the last one read, for /healthz
        self._previous: Report | None = None
        self._unreadable_logged = False

    def new_term(self) -> None:
        """A new term starts with a flush of its own: the next report is a new baseline."""
        self._previous = None

    def end_term(self) -> None:
        """A standby checks nothing: its gauges must not go on showing an old state."""
        self.metrics.capture_ok.clear()
        self.report = None

    async def check(self, fetch: Fetch, flush: Callable[[FlushRequest], None]) -> None:
        """Read the status once; flush and log what it means. A connection error propagates
        (the lock connection is gone: the leadership watch handles that)."""
        try:
            rows = await fetch(QUERY, (self.channel,))
        except (errors.UndefinedTable, errors.UndefinedColumn, errors.UndefinedFunction) as exc:
            if not self._unreadable_logged:
                log.error(
                    "cannot read pgbust.capture_status (%s): run `python -m db upgrade`; "
                    "until then nobody checks that the declared tables are captured",
                    str(exc).splitlines()[0],
                )
                self._unreadable_logged = True
            return
        self._unreadable_logged = False
        current = Report.from_rows(rows)
        verdict = observe(self._previous, current, self.interval_s)
        for line in verdict.errors:
            log.error("%s", line)
        for line in verdict.warnings:
            log.warning("%s", line)
        if verdict.flush is not None:
            flush(verdict.flush)
        self._record(current)
        self._previous = current
        self.report = current

    def _record(self, current: Report) -> None:
        gone = {t.relation for t in self.report.tables} if self.report is not None else set()
        for table in current.tables:
            self.metrics.capture_ok.labels(table.relation).set(1 if table.captured else 0)
            gone.discard(table.relation)
        for relation in gone:  # no longer declared
            self.metrics.capture_ok.remove(relation)
        self.metrics.capture_ddl_ok.set(0 if current.ddl_problem else 1)

    async def run(self, fetch: Fetch, flush: Callable[[FlushRequest], None]) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check(fetch, flush)
            except psycopg.Error as exc:
                log.warning("capture check failed (%s); retrying", str(exc).splitlines()[0])

    def health(self) -> dict[str, Any]:
        if self.report is None:
            return {"checked": False}
        return {
            "checked": True,
            "ok": all(t.captured for t in self.report.tables),
            "not_captured": {
                t.relation: list(t.problems[:3]) for t in self.report.tables if not t.captured
            },
            "ddl_ok": self.report.ddl_problem is None,
        }
