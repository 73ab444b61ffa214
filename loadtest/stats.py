"""From the raw record of one run to summary.json (pure, no I/O).

The load generator writes its raw record (every read with its send time, latency and
judgement; every write with its acknowledgement) and the runner adds the invalidation messages
its subscriber received. Everything numeric in summary.json is computed here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.lag import LagTracker, Received, Write, message_lags_ms

NINES_WITHIN_MS = (1.0, 10.0, 100.0, 1000.0)
READ_KINDS = ("product", "page", "summary")


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence; 0 when empty."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def distribution(samples: Sequence[float], qs: Sequence[int] = (50, 95, 99)) -> dict[str, Any]:
    """{p50, p95, p99, max, n} in the samples' unit, rounded to microsecond-ish precision."""
    ordered = sorted(samples)
    body: dict[str, Any] = {f"p{q}": round(percentile(ordered, q), 3) for q in qs}
    body["max"] = round(ordered[-1], 3) if ordered else 0.0
    body["n"] = len(ordered)
    return body


def nines(
    lags_ms: Sequence[float | None], within_ms: Sequence[float] = NINES_WITHIN_MS
) -> list[dict[str, Any]]:
    """Meta-style cache consistency: the fraction of writes whose entries were gone from every
    tier within t, and that fraction as a number of nines (-log10(1 - fraction)). With every
    write in time the nines are only bounded by the sample size: reported as log10(n), all=True.
    """
    total = len(lags_ms)
    rows = []
    for limit in within_ms:
        in_time = sum(1 for lag in lags_ms if lag is not None and lag <= limit)
        fraction = in_time / total if total else 0.0
        everything = total > 0 and in_time == total
        count = math.log10(total) if everything else -math.log10(1.0 - fraction)
        rows.append(
            {
                "within_ms": limit,
                "fraction": round(fraction, 6),
                "nines": round(count, 2),
                "all": everything,
            }
        )
    return rows


@dataclass
class RawRun:
    """What the load generator recorded (see loadtest/locustfile.py, raw.json)."""

    mode: str
    started_at: float
    stopped_at: float
    # reads: columns of equal length; stale_ms is None for reads the oracle cannot judge
    read_sent: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    read_kind: list[str] = field(default_factory=list)
    read_stale_ms: list[float | None] = field(default_factory=list)
    read_source: list[str] = field(default_factory=list)  # X-Cache; may be empty
    read_cause: list[str] = field(default_factory=list)  # writer behind a stale read; may be empty
    writes: list[Write] = field(default_factory=list)
    write_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    cpu_percent: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RawRun:
        reads = body["reads"]
        return cls(
            mode=body["mode"],
            started_at=float(body["started_at"]),
            stopped_at=float(body["stopped_at"]),
            read_sent=list(reads["sent"]),
            read_ms=list(reads["ms"]),
            read_kind=list(reads["kind"]),
            read_stale_ms=list(reads["stale_ms"]),
            read_source=list(reads.get("source", [])),
            read_cause=list(reads.get("cause", [])),
            writes=[Write(int(w[0]), int(w[1]), w[2], w[3], bool(w[4])) for w in body["writes"]],
            write_ms=list(body.get("write_ms", [])),
            errors=dict(body.get("errors", {})),
            cpu_percent=body.get("cpu_percent"),
            extra=dict(body.get("extra", {})),
        )

    def shifted(self, offset: float) -> RawRun:
        """The same run with every time moved by offset seconds."""
        return dataclasses.replace(
            self,
            started_at=self.started_at + offset,
            stopped_at=self.stopped_at + offset,
            read_sent=[t + offset for t in self.read_sent],
            writes=[
                dataclasses.replace(w, sent_at=w.sent_at + offset, acked_at=w.acked_at + offset)
                for w in self.writes
            ],
        )

    def after(self, start: float) -> RawRun:
        """The part of the run from `start` on (reads sent and writes sent at or after it)."""
        keep = [i for i, sent in enumerate(self.read_sent) if sent >= start]
        writes = [i for i, w in enumerate(self.writes) if w.sent_at >= start]
        return RawRun(
            mode=self.mode,
            started_at=start,
            stopped_at=max(self.stopped_at, start),
            read_sent=[self.read_sent[i] for i in keep],
            read_ms=[self.read_ms[i] for i in keep],
            read_kind=[self.read_kind[i] for i in keep],
            read_stale_ms=[self.read_stale_ms[i] for i in keep],
            read_source=[self.read_source[i] for i in keep if i < len(self.read_source)],
            read_cause=[self.read_cause[i] for i in keep if i < len(self.read_cause)],
            writes=[self.writes[i] for i in writes],
            write_ms=[self.write_ms[i] for i in writes if i < len(self.write_ms)],
            errors=self.errors,
            cpu_percent=self.cpu_percent,
            extra=self.extra,
        )


def _shift_messages(messages: Sequence[Received], offset: float) -> list[Received]:
    return [
        dataclasses.replace(
            m, at=m.at + offset, ts_us=None if m.ts_us is None else m.ts_us + round(offset * 1e6)
        )
        for m in messages
    ]


def concat(
    rounds: Sequence[tuple[RawRun, Sequence[Received] | None]],
) -> tuple[RawRun, list[Received] | None]:
    """Several rounds of one mode laid end to end, as if they were one run (with messages)."""
    first = rounds[0][0]
    merged = RawRun(
        mode=first.mode,
        started_at=first.started_at,
        stopped_at=first.started_at,
        errors={},
        cpu_percent=first.cpu_percent,
        extra=first.extra,
    )
    messages: list[Received] | None = [] if rounds[0][1] is not None else None
    cpu: list[float] = []
    for raw, received in rounds:
        offset = merged.stopped_at - raw.started_at
        moved = raw.shifted(offset)
        merged.stopped_at = moved.stopped_at
        merged.read_sent += moved.read_sent
        merged.read_ms += moved.read_ms
        merged.read_kind += moved.read_kind
        merged.read_stale_ms += moved.read_stale_ms
        merged.read_source += moved.read_source
        merged.read_cause += moved.read_cause
        merged.writes += moved.writes
        merged.write_ms += moved.write_ms
        for kind, count in raw.errors.items():
            merged.errors[kind] = merged.errors.get(kind, 0) + count
        if raw.cpu_percent is not None:
            cpu.append(raw.cpu_percent)
        if messages is not None and received is not None:
            messages += _shift_messages(received, offset)
    merged.cpu_percent = round(sum(cpu) / len(cpu), 1) if cpu else None
    return merged, messages


def summarize(
    full: RawRun,
    messages: Sequence[Received] | None,
    *,
    warmup_s: float = 0.0,
    timeline_step_s: float = 1.0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json of one run: see summarize_rounds."""
    return summarize_rounds(
        [(full, messages)], warmup_s=warmup_s, timeline_step_s=timeline_step_s, extra=extra
    )


def summarize_rounds(
    rounds: Sequence[tuple[RawRun, Sequence[Received] | None]],
    *,
    warmup_s: float = 0.0,
    timeline_step_s: float = 1.0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json: the DESIGN.md fields first, then the extras.

    The first warmup_s seconds of each round (caches filling up) are left out of every number
    but the timeline; rounds count as one run laid end to end. messages=None means the mode
    has no invalidation channel (nocache, ttl): the lag fields are null rather than a
    misleading zero.
    """
    full, _ = concat(rounds)
    windows = [(r.after(r.started_at + warmup_s), m) for r, m in rounds]
    raw, messages = concat(
        [
            (window, None if m is None else [x for x in m if x.at >= window.started_at])
            for window, m in windows
        ]
    )
    duration = max(raw.stopped_at - raw.started_at, 1e-9)
    judged = [ms for ms in raw.read_stale_ms if ms is not None]
    staleness = [ms for ms in judged if ms > 0]
    stale_reads = len(staleness)
    oob_writes = sum(1 for w in raw.writes if w.oob)
    errors = sum(raw.errors.values())
    lag_fields = _lag_fields(raw.writes, messages)
    summary: dict[str, Any] = {
        "mode": raw.mode,
        "duration_s": round(duration, 3),
        "reads": len(raw.read_ms),
        "writes": len(raw.writes),
        "oob_writes": oob_writes,
        "errors": errors,
        "read_rps": round(len(raw.read_ms) / duration, 2),
        "write_rps": round(len(raw.writes) / duration, 2),
        "read_latency_ms": distribution(raw.read_ms),
        "stale_reads": stale_reads,
        "stale_ratio": round(stale_reads / len(judged), 6) if judged else 0.0,
        "staleness_ms": distribution(staleness),
        "invalidation_lag_ms": lag_fields.pop("invalidation_lag_ms"),
        # --- extras -----------------------------------------------------------------------
        "judged_reads": len(judged),
        "stale_reads_over_100ms": sum(1 for ms in staleness if ms > 100.0),
        "stale_reads_over_1s": sum(1 for ms in staleness if ms > 1000.0),
        "stale_reads_by_writer": _count(
            c for c, ms in zip(raw.read_cause, raw.read_stale_ms, strict=False) if ms
        ),
        "api_writes": len(raw.writes) - oob_writes,
        "oob_write_rps": round(oob_writes / duration, 2),
        "write_latency_ms": distribution(raw.write_ms),
        "errors_by_kind": raw.errors,
        "reads_by_kind": _by_kind(raw),
        "cache_hit_ratio": _hit_ratio(raw.read_source),
        "read_latency_by_source_ms": _by_source(raw),
        **lag_fields,
        "locust_cpu_percent": raw.cpu_percent,
        "warmup_s": warmup_s,
        "timeline": timeline(full, timeline_step_s),
    }
    summary.update(raw.extra)
    summary.update(extra or {})
    return summary


def _lag_fields(writes: Sequence[Write], messages: Sequence[Received] | None) -> dict[str, Any]:
    if messages is None:
        empty = {"p50": None, "p99": None, "max": None, "n": 0}
        return {
            "invalidation_lag_ms": empty,
            "invalidation_lag_oob_ms": empty,
            "invalidation_nines": None,
            "writes_never_invalidated": None,
            "cdc_message_lag_ms": empty,
            "invalidation_messages": 0,
            "invalidation_messages_by_origin": {},
            "invalidation_flushes": 0,
        }
    tracker = LagTracker(messages)
    lags: list[float | None] = []
    oob_lags: list[float] = []
    for write in writes:
        lag = tracker.lag_s(write)
        lag_ms = None if lag is None else lag * 1000.0
        lags.append(lag_ms)
        if write.oob and lag_ms is not None:
            oob_lags.append(lag_ms)
    seen = [lag for lag in lags if lag is not None]
    return {
        "invalidation_lag_ms": distribution(seen, (50, 99)),
        "invalidation_lag_oob_ms": distribution(oob_lags, (50, 99)),
        "invalidation_nines": nines(lags),
        "writes_never_invalidated": len(lags) - len(seen),
        "cdc_message_lag_ms": distribution(message_lags_ms(messages), (50, 99)),
        "invalidation_messages": len(messages),
        "invalidation_messages_by_origin": _count(m.origin for m in messages),
        "invalidation_flushes": sum(1 for m in messages if m.flush),
    }


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _by_source(raw: RawRun) -> dict[str, Any]:
    """Read latency per X-Cache value: what an L1 hit, an L2 hit and a miss each cost."""
    if len(raw.read_source) != len(raw.read_ms):
        return {}
    groups: dict[str, list[float]] = {}
    for source, ms in zip(raw.read_source, raw.read_ms, strict=True):
        groups.setdefault(source, []).append(ms)
    return {source: distribution(samples) for source, samples in sorted(groups.items())}


def _hit_ratio(sources: Sequence[str]) -> float | None:
    """Share of reads served by a cache tier (X-Cache L1 or L2); None without the header."""
    if not sources:
        return None
    return round(sum(1 for s in sources if s in ("L1", "L2")) / len(sources), 4)


def _by_kind(raw: RawRun) -> dict[str, Any]:
    body: dict[str, Any] = {}
    sources = raw.read_source if len(raw.read_source) == len(raw.read_kind) else None
    for kind in READ_KINDS:
        latencies = [ms for ms, k in zip(raw.read_ms, raw.read_kind, strict=True) if k == kind]
        stale = [
            s for s, k in zip(raw.read_stale_ms, raw.read_kind, strict=True) if k == kind and s
        ]
        body[kind] = {"reads": len(latencies), "stale": len(stale), **distribution(latencies)}
        if sources is not None:
            mine = [s for s, k in zip(sources, raw.read_kind, strict=True) if k == kind]
            body[kind]["sources"] = _count(mine)
            body[kind]["hit_ratio"] = _hit_ratio(mine)
    return body


def timeline(raw: RawRun, step_s: float = 1.0) -> list[dict[str, Any]]:
    """Per time step: reads, latency p50/p95, stale reads and the largest staleness."""
    buckets = max(1, math.ceil((raw.stopped_at - raw.started_at) / step_s))
    latencies: list[list[float]] = [[] for _ in range(buckets)]
    stale: list[list[float]] = [[] for _ in range(buckets)]
    for sent, ms, stale_ms in zip(raw.read_sent, raw.read_ms, raw.read_stale_ms, strict=True):
        index = min(buckets - 1, max(0, int((sent - raw.started_at) / step_s)))
        latencies[index].append(ms)
        if stale_ms:
            stale[index].append(stale_ms)
    rows = []
    for index in range(buckets):
        ordered = sorted(latencies[index])
        rows.append(
            {
                "t": round(index * step_s, 3),
                "reads": len(ordered),
                "p50_ms": round(percentile(ordered, 50), 3),
                "p95_ms": round(percentile(ordered, 95), 3),
                "stale": len(stale[index]),
                "max_staleness_ms": round(max(stale[index], default=0.0), 3),
            }
        )
    return rows
