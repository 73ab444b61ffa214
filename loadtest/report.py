"""The three-mode comparison: one Markdown table and one chart (no servers involved)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MODE_ORDER = ("nocache", "ttl", "cdc")
MODE_COLORS = {"nocache": "#7f7f7f", "ttl": "#d62728", "cdc": "#2ca02c"}

HEADER = (
    "mode",
    "read p50 ms",
    "read p95 ms",
    "read p99 ms",
    "read req/s",
    "cache hits",
    "write req/s (oob)",
    "stale reads",
    "stale ratio",
    "stale > 100 ms",
    "max staleness ms",
    "inval. lag p99 ms (all / oob)",
    "gone within 10 ms",
    "host load",
)


def _number(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.{digits}f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _within(summary: Mapping[str, Any], limit_ms: float) -> str:
    rows = summary.get("invalidation_nines") or []
    for row in rows:
        if row["within_ms"] == limit_ms:
            share = f"{100.0 * row['fraction']:.3g}%"
            nines = f"{'≥' if row['all'] else ''}{row['nines']:.1f} nines"
            return f"{share} ({nines})"
    return "—"


def table_row(summary: Mapping[str, Any]) -> list[str]:
    latency = summary["read_latency_ms"]
    lag = summary["invalidation_lag_ms"]
    oob = summary.get("invalidation_lag_oob_ms") or {}
    lag_text = (
        "—"
        if lag.get("p99") is None
        else f"{_number(lag['p99'], 2)} / {_number(oob.get('p99'), 2)}"
    )
    mode = str(summary["mode"])
    if summary.get("capture"):
        mode += f" ({summary['capture']})"  # cdc: how it captured changes
    return [
        mode,
        _number(latency["p50"], 2),
        _number(latency["p95"], 2),
        _number(latency["p99"], 2),
        _number(summary["read_rps"]),
        "—"
        if summary.get("cache_hit_ratio") is None
        else f"{100.0 * summary['cache_hit_ratio']:.0f}%",
        f"{_number(summary['write_rps'])} ({_number(summary.get('oob_write_rps'))})",
        str(summary["stale_reads"]),
        f"{100.0 * summary['stale_ratio']:.3g}%",
        str(summary.get("stale_reads_over_100ms", "—")),
        _number(summary["staleness_ms"]["max"]),
        lag_text,
        _within(summary, 10.0),
        _number((summary.get("load_average") or [None])[0], 1),
    ]


def ordered(summaries: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    known = [summaries[mode] for mode in MODE_ORDER if mode in summaries]
    return known + [s for mode, s in summaries.items() if mode not in MODE_ORDER]


def markdown(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """The comparison table plus the headline ratios, as Markdown."""
    rows = [table_row(summary) for summary in ordered(summaries)]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = headline(summaries)
    return (
        "\n".join(lines)
        + "\n"
        + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else "")
    )


def _round_ratios(summaries: Mapping[str, Mapping[str, Any]], mode: str) -> list[str]:
    """nocache's p50 over mode's, round i against round i (A B C C B A: each pair ran close
    together), with the load average of both rounds."""
    base = summaries.get("nocache", {}).get("by_round") or []
    cached = summaries.get(mode, {}).get("by_round") or []
    pairs = []
    for b, c in zip(base, cached, strict=False):
        if c["read_p50_ms"] > 0:
            pairs.append(
                f"{b['read_p50_ms'] / c['read_p50_ms']:.2f}x "
                f"(load {b['load_average']:g} / {c['load_average']:g})"
            )
    return pairs


def headline(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Plain sentences about the targets, computed from the numbers (never asserted)."""
    notes = []
    base = summaries.get("nocache")
    for mode in ("ttl", "cdc"):
        cached = summaries.get(mode)
        if base and cached and cached["read_latency_ms"]["p50"] > 0:
            ratio = base["read_latency_ms"]["p50"] / cached["read_latency_ms"]["p50"]
            relation = f"{ratio:.1f}x lower" if ratio >= 1 else f"{1 / ratio:.1f}x higher"
            notes.append(f"{mode}: read p50 {relation} than nocache")
    for mode in ("ttl", "cdc"):
        pairs = _round_ratios(summaries, mode)
        if pairs:
            notes.append(f"{mode}: read p50 per round, nocache / {mode}: " + ", ".join(pairs))
    by_kind = [
        f"{s['mode']} {s['reads_by_kind']['summary']['p50']:g} ms"
        for s in ordered(summaries)
        if s.get("reads_by_kind", {}).get("summary", {}).get("reads")
    ]
    if by_kind:
        notes.append("category summary endpoint p50: " + ", ".join(by_kind))
    cdc = summaries.get("cdc")
    if cdc:
        captured = (cdc.get("settings") or {}).get("capture") or cdc.get("capture") or "notify"
        notes.append(f"cdc: changes captured with {captured} (PGBUST_CAPTURE)")
        notes.append(
            f"cdc: {cdc['stale_reads']} stale of {cdc.get('judged_reads', cdc['reads'])} judged "
            f"reads, {cdc.get('stale_reads_over_100ms', '?')} stale by more than 100 ms, at "
            f"{cdc['write_rps']:g} writes/s ({cdc.get('oob_write_rps', 0):g}/s out-of-band)"
        )
    if cdc and cdc.get("invalidation_lag_oob_ms", {}).get("p99") is not None:
        oob = cdc["invalidation_lag_oob_ms"]
        message = cdc.get("cdc_message_lag_ms") or {}
        notes.append(
            f"cdc: out-of-band write acknowledged -> entry gone from every tier p50 "
            f"{oob['p50']:g} ms, p99 {oob['p99']:g} ms; trigger -> invalidation received p50 "
            f"{message.get('p50')} ms, p99 {message.get('p99')} ms"
        )
    ttl = summaries.get("ttl")
    if ttl:
        notes.append(
            f"ttl: {ttl['stale_reads']} stale reads ({100.0 * ttl['stale_ratio']:.3g}%), "
            f"up to {ttl['staleness_ms']['max'] / 1000.0:.1f} s old"
        )
    return notes


def chart(summaries: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Latency (p50, p95) and staleness over time, one line per mode, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for summary in ordered(summaries):
        mode = str(summary["mode"])
        color = MODE_COLORS.get(mode)
        timeline: Sequence[Mapping[str, Any]] = summary.get("timeline", [])
        busiest = max((row["reads"] for row in timeline), default=0)
        # a bucket cut short at the end of a round holds a handful of reads: not a trend
        rows = [row for row in timeline if row["reads"] >= busiest / 4]
        seconds = [row["t"] for row in rows]
        top.plot(seconds, [r["p50_ms"] for r in rows], color=color, label=f"{mode} p50")
        top.plot(
            seconds,
            [r["p95_ms"] for r in rows],
            color=color,
            linestyle="--",
            alpha=0.6,
            label=f"{mode} p95",
        )
        ratio = [100.0 * r["stale"] / r["reads"] if r["reads"] else 0.0 for r in rows]
        middle.plot(seconds, ratio, color=color, label=mode)
        worst = [r["max_staleness_ms"] for r in rows]
        bottom.plot(
            seconds,
            [w if w > 0 else float("nan") for w in worst],
            color=color,
            marker=".",
            label=mode,
        )
    top.set_ylabel("read latency (ms)")
    top.set_yscale("log")
    top.legend(ncol=3, fontsize="small")
    top.set_title("pgbust staleness load test: nocache vs ttl vs cdc")
    middle.set_ylabel("stale reads (% of reads)")
    middle.legend(fontsize="small")
    bottom.set_ylabel("max staleness (ms)")
    bottom.set_yscale("log")
    rounds = max(int(s.get("rounds", 1)) for s in summaries.values()) if summaries else 1
    bottom.set_xlabel(
        "seconds into the run" if rounds == 1 else f"seconds of load ({rounds} rounds end to end)"
    )
    bottom.legend(fontsize="small")
    for axis in (top, middle, bottom):
        axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
