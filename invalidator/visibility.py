"""When a transaction read from the WAL is visible to readers (pure, no I/O).

A commit is written to the WAL (and may be decoded and sent by the walsender) *before* the
committing backend leaves the proc array, and only then can other sessions see it. The gap is
microseconds on an idle server, milliseconds on a busy one (a preempted backend), and as long
as a synchronous standby takes to answer with `synchronous_standby_names` set. An invalidation
applied inside that gap is undone by the next reader: it takes a lease after the invalidation,
reads the row *before* the commit is visible, and stores the old value under a valid lease,
stale for good. NOTIFY capture has no such gap (listeners receive a notification only once its
transaction is visible), so WAL capture applies a batch only once each of its transactions is
visible to a new snapshot: `invisible(xids, pg_current_snapshot())` is empty.

Snapshots carry 64-bit transaction ids (xid8, "xmin:xmax:xip,..."); pgoutput's BEGIN carries
the 32-bit xid. A decoded transaction is recent (it committed moments ago, wraparound keeps
every live id within 2^31 of the newest), so its 64-bit id is the one nearest the snapshot's
xmax: below it and not in xip means visible; at or above it means not finished yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_WRAP = 1 << 32


@dataclass(frozen=True, slots=True)
class Snapshot:
    """pg_current_snapshot(): ids < xmin are finished, ids >= xmax had not finished, and
    the ids in xip were still running when the snapshot was taken."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        try:
            xmin, xmax, xip = text.split(":")
            running = frozenset(int(x) for x in xip.split(",") if x)
            return cls(int(xmin), int(xmax), running)
        except ValueError:
            raise ValueError(f"not a pg_snapshot: {text!r}") from None

    def full_xid(self, xid: int) -> int:
        """The 64-bit id of a recent 32-bit xid: the one nearest xmax (within 2^31 of it)."""
        candidate = (self.xmax & ~(_WRAP - 1)) | (xid & (_WRAP - 1))
        if candidate - self.xmax >= _WRAP // 2:
            candidate -= _WRAP
        elif self.xmax - candidate > _WRAP // 2:
            candidate += _WRAP
        return max(candidate, 0)

    def sees(self, xid: int) -> bool:
        """True when a transaction that committed (it is in the WAL) is visible here."""
        full = self.full_xid(xid)
        return full < self.xmax and full not in self.xip


def invisible(xids: Iterable[int], snapshot: Snapshot) -> set[int]:
    """The committed transactions (32-bit xids) a reader taking `snapshot` would not see yet."""
    return {xid for xid in xids if not snapshot.sees(xid)}
