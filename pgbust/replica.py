"""Read replicas (PGBUST_READ_DATABASE_URL): when a load may read the replica (pure, no I/O).

A loader that reads a streaming replica which has not yet replayed a change can refill the
pre-change row *after* its invalidation was applied, with a valid lease: the stale fill the
lease and stamp guards cannot see (DESIGN invariant 3). The LSN marker closes it:

- the invalidator, whenever it applies an invalidation, raises `<ns>:lsn` to an LSN at or
  past the commit of every change that invalidation covers, set-if-greater, in the same
  script as the invalidation (pgbust.lua.raising_lsn), so the marker is never behind an
  applied invalidation. WAL capture knows each transaction's end LSN (pgoutput); NOTIFY
  capture does not, so it reads pg_current_wal_insert_lsn() on the primary after receiving
  the batch (past every received commit: conservative, and correct). On a Redis Cluster,
  where an invalidation is several scripts on other slots, it is raised before them;
- the reader's GET_OR_LEASE returns the marker with the lease, atomically
  (pgbust.lua.with_lsn_marker), so it covers every invalidation applied before the lease
  (on a cluster the reader GETs it right after the grant: pgbust/cluster_reads.py);
- the load runs on the replica only if the replica's pg_last_wal_replay_lsn(), read as the
  first statement on the very connection the loader then uses, is at or past the marker
  (replay only moves forward, so the loader's statements see at least that much); else it
  runs on the primary. An invalidation applied after the lease deletes the lease or bumps
  a generation, so the existing fill guard refuses that fill anyway.

A missing marker (evicted, Redis restarted or flushed, an invalidator that does not keep it)
means "unknown": the primary is used until the invalidator writes it again (at its next batch
or capture probe, within a heartbeat). When the invalidator cannot learn an LSN (its Postgres
session is gone) it deletes the marker in the same script as the invalidation instead.

Markers are stored as 16 hex digits (pgbust.lua compares them in two 32-bit halves: exact,
where a Lua number is not past 2^53).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# LSN 0 is InvalidXLogRecPtr in Postgres: "no LSN known", the marker is deleted
UNKNOWN_LSN = 0

Server = Literal["replica", "primary"]
# why a guarded load went where it went (metric label values)
Reason = Literal["caught_up", "no_marker", "behind", "not_replaying", "replica_error"]


def parse_lsn(text: str) -> int:
    """'16/B374D848' (Postgres' pg_lsn text) as an integer."""
    high, sep, low = text.strip().partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def marker_text(lsn: int) -> str:
    """The marker's stored form: 16 hex digits (what the Lua scripts compare)."""
    if not 0 < lsn < 2**64:
        raise ValueError(f"not a valid LSN: {lsn}")
    return f"{lsn:016X}"


def parse_marker(raw: bytes | str | None) -> int | None:
    """The marker GET_OR_LEASE returned, or None when the key was missing (or unreadable)."""
    if not raw:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        value = int(text, 16)
    except ValueError:
        return None
    return value or None


@dataclass(frozen=True, slots=True)
class Choice:
    server: Server
    reason: Reason


CAUGHT_UP = Choice("replica", "caught_up")
NO_MARKER = Choice("primary", "no_marker")
BEHIND = Choice("primary", "behind")
NOT_REPLAYING = Choice("primary", "not_replaying")
REPLICA_ERROR = Choice("primary", "replica_error")


def choose(marker: int | None, replayed: int | None) -> Choice:
    """Where a leased load may read, given the marker the lease came with and the replica's
    replay LSN (None: pg_last_wal_replay_lsn() was NULL, the server is not a standby).

    The replica only when it has replayed at least up to the marker; anything unknown is
    the primary (fail safe)."""
    if marker is None:
        return NO_MARKER
    if replayed is None:
        return NOT_REPLAYING
    if replayed < marker:
        return BEHIND
    return CAUGHT_UP
