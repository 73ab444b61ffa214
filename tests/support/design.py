"""Contracts of ../shared/DESIGN.md that tests check, written down once."""

# The fields every load-test summary.json must have ("Contracts users rely on").
SUMMARY_FIELDS = frozenset(
    {
        "mode",
        "duration_s",
        "reads",
        "writes",
        "oob_writes",
        "errors",
        "read_rps",
        "write_rps",
        "read_latency_ms",
        "stale_reads",
        "stale_ratio",
        "staleness_ms",
        "invalidation_lag_ms",
    }
)

# Issue 5: no single Redis command of a fan-out may block longer than this (SLOWLOG threshold).
SLOW_US = 50_000
