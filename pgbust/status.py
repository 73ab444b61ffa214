"""What `python -m pgbust status` shows, and what needs attention (pure: no I/O).

The facts are gathered by pgbust/status_probe.py; here they are judged against bounds and
rendered, for a person (one screen) or for a script (JSON). A finding is something an operator
should act on; the command exits non-zero when there is any.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Severity = Literal["critical", "warning"]


@dataclass(frozen=True)
class Bounds:
    expect_subscribers: int = 1  # API workers that should be subscribed (each has an L1)
    beat_max_age_s: float = 5.0  # an active invalidator silent this long is stuck
    audit_max_age_s: float = 900.0  # 3 x PGBUST_AUDIT_INTERVAL_S's default
    slot_lag_bytes: int = 1 << 30
    memory_full_ratio: float = 0.9


@dataclass(frozen=True)
class Finding:
    severity: Severity
    what: str  # a stable key for scripts: no_active_invalidator, table_not_captured, ...
    message: str


@dataclass(frozen=True)
class Invalidators:
    active_pid: int | None  # Postgres backend holding the namespace's lock
    active_addr: str | None
    beat_age_s: float | None  # since the active one's last heartbeat row
    listener_connected: bool
    standbys: list[str]  # "addr pid" of lock connections holding no lock (any namespace)
    alive_sender: str | None  # the liveness key: which process proves capture now
    alive_ttl_ms: int | None
    # From one heartbeat heard on the channel: everything committed more than proof_age_ms
    # before it was sent had been applied to Redis (the lag's upper bound at that moment).
    proof_age_ms: int | None = None
    beat_every_ms: int | None = None


@dataclass(frozen=True)
class Table:
    relation: str
    captured: bool
    problems: list[str]


@dataclass(frozen=True)
class Slot:
    name: str
    exists: bool
    active: bool = False
    lag_bytes: int | None = None
    wal_status: str | None = None
    safe_wal_size: int | None = None


@dataclass(frozen=True)
class RedisState:
    version: str
    policy: str
    verdict: str
    advice: str
    maxmemory: int | None
    used_memory: int | None
    evicted_keys: int | None
    epoch: int | None  # µs on the Redis clock of the last bump (None: no epoch key)
    epoch_age_s: float | None
    subscribers: int  # PUBSUB NUMSUB of the namespace's channel
    subscriber_clients: list[str]  # "addr age=..s" of pgbust API subscriber connections


@dataclass(frozen=True)
class Audit:
    at: float
    age_s: float
    checked: int
    stale: int
    ratio: float


@dataclass
class Status:
    namespace: str
    capture: str  # notify | wal
    invalidators: Invalidators | None = None
    tables: list[Table] = field(default_factory=list)
    ddl_problem: str | None = None
    slot: Slot | None = None
    redis: RedisState | None = None
    audit: Audit | None = None
    errors: list[str] = field(default_factory=list)  # a server that could not be read
    findings: list[Finding] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def assess(status: Status, bounds: Bounds) -> list[Finding]:
    """Everything that needs attention, most serious first."""
    found = [Finding("critical", "unreachable", error) for error in status.errors]
    found += _invalidators(status, bounds)
    if status.invalidators is not None and not status.tables:
        found.append(
            Finding(
                "critical",
                "nothing_captured",
                "no declared table is captured in this database: run `python -m db upgrade`",
            )
        )
    for table in status.tables:
        if not table.captured:
            found.append(
                Finding(
                    "critical",
                    "table_not_captured",
                    f"{table.relation} is not captured: {'; '.join(table.problems)}",
                )
            )
    if status.ddl_problem:
        found.append(Finding("warning", "ddl_not_captured", status.ddl_problem))
    found += _slot(status.slot, bounds)
    found += _redis(status.redis, bounds)
    found += _audit(status, bounds)
    return sorted(found, key=lambda f: f.severity != "critical")


def _invalidators(status: Status, bounds: Bounds) -> list[Finding]:
    inv = status.invalidators
    if inv is None:
        return []
    found = []
    if inv.active_pid is None:
        found.append(
            Finding(
                "critical",
                "no_active_invalidator",
                "no active invalidator: caches are bypassed, every read goes to Postgres",
            )
        )
    elif inv.beat_age_s is None or inv.beat_age_s > bounds.beat_max_age_s:
        age = "never" if inv.beat_age_s is None else f"{inv.beat_age_s:.1f} s ago"
        found.append(
            Finding(
                "critical",
                "invalidator_silent",
                f"the active invalidator holds the lock but last beat {age} (paused or hung?)",
            )
        )
    if status.redis is not None and inv.alive_sender is None:
        found.append(
            Finding(
                "critical",
                "capture_not_live",
                "no capture liveness key: no invalidator proves its channels, so the caches "
                "serve nothing (reads are correct and uncached)",
            )
        )
    if not inv.standbys:
        found.append(
            Finding(
                "warning",
                "no_standby",
                "no standby invalidator: nothing takes over if the active one goes",
            )
        )
    if status.redis is not None and status.redis.subscribers < bounds.expect_subscribers:
        found.append(
            Finding(
                "warning",
                "api_unsubscribed",
                f"{status.redis.subscribers} API workers subscribed to the invalidation channel,"
                f" {bounds.expect_subscribers} expected: those missing serve no L1",
            )
        )
    return found


def _slot(slot: Slot | None, bounds: Bounds) -> list[Finding]:
    if slot is None:
        return []
    if not slot.exists:
        return [
            Finding(
                "critical",
                "slot_missing",
                f"PGBUST_CAPTURE=wal but there is no replication slot {slot.name}: "
                "run `python -m db upgrade` with PGBUST_CAPTURE=wal",
            )
        ]
    found = []
    if slot.wal_status == "lost":
        found.append(
            Finding("critical", "slot_lost", f"slot {slot.name} was invalidated (wal_status lost)")
        )
    if not slot.active:
        found.append(
            Finding("warning", "slot_inactive", f"slot {slot.name} has no consumer streaming")
        )
    if slot.lag_bytes is not None and slot.lag_bytes > bounds.slot_lag_bytes:
        found.append(
            Finding(
                "warning",
                "slot_lag",
                f"slot {slot.name} holds back {slot.lag_bytes} bytes of WAL "
                f"(bound {bounds.slot_lag_bytes})",
            )
        )
    return found


def _redis(redis: RedisState | None, bounds: Bounds) -> list[Finding]:
    if redis is None:
        return []
    found = []
    if redis.verdict != "recommended":
        found.append(
            Finding(
                "warning",
                "redis_policy",
                f"maxmemory-policy {redis.policy} ({redis.verdict}): {redis.advice}",
            )
        )
    if redis.maxmemory and redis.used_memory is not None:
        ratio = redis.used_memory / redis.maxmemory
        if ratio > bounds.memory_full_ratio:
            found.append(
                Finding("warning", "redis_nearly_full", f"Redis uses {ratio:.0%} of maxmemory")
            )
    return found


def _audit(status: Status, bounds: Bounds) -> list[Finding]:
    audit = status.audit
    if status.redis is None:
        return []
    if audit is None:
        return [
            Finding(
                "warning",
                "no_audit",
                "no consistency audit recorded: is celery beat running? "
                "(`python -m worker audit` runs one)",
            )
        ]
    found = []
    if audit.stale:
        found.append(
            Finding(
                "critical",
                "audit_stale",
                f"the last audit found {audit.stale} stale entries of {audit.checked} checked "
                "(deleted since): a write path escapes capture",
            )
        )
    if audit.age_s > bounds.audit_max_age_s:
        found.append(
            Finding(
                "warning",
                "audit_old",
                f"the last audit ran {audit.age_s:.0f} s ago (bound {bounds.audit_max_age_s:.0f})",
            )
        )
    return found


def _when(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def render(status: Status) -> str:
    """One screen for a person at a terminal."""
    head = "OK" if status.healthy else f"NEEDS ATTENTION ({len(status.findings)})"
    lines = [f"pgbust namespace {status.namespace} (capture: {status.capture}): {head}", ""]
    lines += _render_invalidators(status.invalidators)
    lines.append("capture:")
    for table in status.tables:
        state = "captured" if table.captured else "NOT captured: " + "; ".join(table.problems)
        lines.append(f"  {table.relation}: {state}")
    if not status.tables:
        lines.append("  (no declared table found)")
    if status.slot is not None:
        slot = status.slot
        if slot.exists:
            safe = "unlimited" if slot.safe_wal_size is None else _size(slot.safe_wal_size)
            lines.append(
                f"  slot {slot.name}: {'active' if slot.active else 'INACTIVE'}, lag "
                f"{_size(slot.lag_bytes)}, wal_status {slot.wal_status}, safe_wal_size {safe}"
            )
        else:
            lines.append(f"  slot {slot.name}: MISSING")
    lines += _render_redis(status.redis)
    audit = status.audit
    if audit is not None:
        lines.append(
            f"last audit: {_when(audit.at)} ({audit.age_s:.0f} s ago): {audit.stale} stale of "
            f"{audit.checked} checked (ratio {audit.ratio:.6f})"
        )
    elif status.redis is not None:
        lines.append("last audit: none recorded")
    if status.findings:
        lines += ["", "needs attention:"]
        lines += [f"  [{f.severity}] {f.message}" for f in status.findings]
    return "\n".join(lines)


def _render_invalidators(inv: Invalidators | None) -> list[str]:
    if inv is None:
        return []
    if inv.active_pid is None:
        active = "NONE"
    else:
        beat = "never" if inv.beat_age_s is None else f"{inv.beat_age_s * 1000:.0f} ms ago"
        listener = "LISTEN connected" if inv.listener_connected else "no LISTEN connection"
        active = f"{inv.active_addr} backend {inv.active_pid}; last beat {beat}; {listener}"
    alive = (
        f"proven by {inv.alive_sender} (valid {inv.alive_ttl_ms} ms more)"
        if inv.alive_sender
        else "NOT live (caches bypassed)"
    )
    lag = (
        "no heartbeat heard on the channel"
        if inv.proof_age_ms is None
        else f"everything committed up to {inv.proof_age_ms} ms before the last heartbeat was"
        f" applied (beats every {inv.beat_every_ms} ms)"
    )
    return [
        f"invalidator: active {active}",
        f"  standby: {len(inv.standbys)} ({', '.join(inv.standbys) or 'none'}; any namespace)",
        f"  capture: {alive}",
        f"  lag: {lag}",
    ]


def _render_redis(redis: RedisState | None) -> list[str]:
    if redis is None:
        return []
    limit = "none" if redis.maxmemory == 0 else _size(redis.maxmemory)
    epoch = (
        "none (nothing cached under an epoch yet)"
        if redis.epoch is None
        else f"{redis.epoch}, last bump {_when(redis.epoch / 1e6)} ({redis.epoch_age_s:.0f} s ago)"
    )
    return [
        f"redis {redis.version}: maxmemory-policy {redis.policy} ({redis.verdict}); used "
        f"{_size(redis.used_memory)} of {limit}; evicted keys {redis.evicted_keys}",
        f"  epoch: {epoch}",
        f"  subscribed API workers: {redis.subscribers}",
        "  API subscriber connections on this Redis (any namespace): "
        + (", ".join(redis.subscriber_clients) or "none"),
    ]
