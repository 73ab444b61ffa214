"""summary.json arithmetic, invalidation lag, nines and the comparison report (no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import report
from loadtest.lag import LagTracker, Received, Write, message_lags_ms
from loadtest.stats import RawRun, nines, percentile, summarize
from tests.support.design import SUMMARY_FIELDS


def test_percentile_is_nearest_rank() -> None:
    data = [float(i) for i in range(1, 101)]
    assert percentile(data, 50) == 50.0
    assert percentile(data, 99) == 99.0
    assert percentile(data, 100) == 100.0
    assert percentile([], 50) == 0.0
    assert percentile([7.0], 99) == 7.0


def test_nines_count_writes_gone_within_each_limit() -> None:
    lags: list[float | None] = [0.5] * 990 + [5.0] * 9 + [None]
    rows = {row["within_ms"]: row for row in nines(lags)}
    assert rows[1.0]["fraction"] == pytest.approx(0.99)
    assert rows[1.0]["nines"] == pytest.approx(2.0)
    assert rows[10.0]["fraction"] == pytest.approx(0.999)
    assert rows[10.0]["nines"] == pytest.approx(3.0)
    assert not rows[1000.0]["all"]  # one write never invalidated


def test_nines_of_a_perfect_run_are_bounded_by_the_sample_size() -> None:
    rows = nines([0.1] * 1000)
    assert all(row["all"] and row["nines"] == pytest.approx(3.0) for row in rows)


def test_lag_is_first_message_for_the_key_after_the_write_was_sent() -> None:
    tracker = LagTracker(
        [
            Received(at=0.5, keys=("product:1",)),  # before the write: about something else
            Received(at=1.004, keys=("product:2", "product:1")),
            Received(at=1.5, keys=("product:1",)),
        ]
    )
    write = Write(product_id=1, version=2, sent_at=1.0, acked_at=1.002, oob=True)
    assert tracker.lag_s(write) == pytest.approx(0.002)


def test_lag_is_zero_when_the_entry_was_gone_before_the_ack() -> None:
    tracker = LagTracker([Received(at=1.001, keys=("product:1",))])
    write = Write(product_id=1, version=2, sent_at=1.0, acked_at=1.003, oob=False)
    assert tracker.lag_s(write) == 0.0


def test_a_flush_covers_every_entry_and_a_missing_message_is_none() -> None:
    tracker = LagTracker([Received(at=2.0, keys=(), flush=True)])
    assert tracker.lag_s(Write(5, 2, 1.0, 1.5, True)) == pytest.approx(0.5)
    assert LagTracker([]).lag_s(Write(5, 2, 1.0, 1.5, True)) is None


def test_message_lag_uses_the_trigger_time_of_cdc_messages_only() -> None:
    messages = [
        Received(at=10.003, keys=("product:1",), ts_us=10_000_000, origin="cdc"),
        Received(at=10.5, keys=("product:1",), ts_us=None, origin="api"),
    ]
    assert message_lags_ms(messages) == [pytest.approx(3.0)]


def _raw(mode: str = "cdc") -> RawRun:
    return RawRun(
        mode=mode,
        started_at=100.0,
        stopped_at=110.0,
        read_sent=[100.1, 101.2, 102.3, 103.4],
        read_ms=[1.0, 2.0, 3.0, 50.0],
        read_kind=["product", "product", "page", "summary"],
        read_stale_ms=[0.0, 150.0, 0.0, None],
        read_source=["L1", "MISS", "L2", "L1"],
        read_cause=["", "oob", "", ""],
        writes=[Write(1, 2, 100.0, 100.01, False), Write(2, 2, 101.0, 101.01, True)],
        write_ms=[10.0, 10.0],
        errors={"read": 1},
        cpu_percent=42.0,
    )


def test_summary_has_the_design_fields_and_counts() -> None:
    messages = [
        Received(100.011, ("product:1",)),
        Received(101.02, ("product:2",), ts_us=101_015_000, origin="cdc"),
    ]
    summary = summarize(_raw(), messages)
    assert summary.keys() >= SUMMARY_FIELDS
    assert summary["reads"] == 4
    assert summary["writes"] == 2
    assert summary["oob_writes"] == 1
    assert summary["errors"] == 1
    assert summary["read_rps"] == pytest.approx(0.4)
    assert summary["stale_reads"] == 1
    assert summary["judged_reads"] == 3
    assert summary["stale_ratio"] == pytest.approx(1 / 3, rel=1e-4)
    assert summary["staleness_ms"]["max"] == 150.0
    assert summary["stale_reads_over_100ms"] == 1
    assert summary["invalidation_lag_ms"]["max"] == pytest.approx(10.0, abs=0.01)
    assert summary["writes_never_invalidated"] == 0
    assert summary["locust_cpu_percent"] == 42.0
    assert summary["cache_hit_ratio"] == 0.75
    assert summary["stale_reads_by_writer"] == {"oob": 1}
    assert summary["reads_by_kind"]["product"]["sources"] == {"L1": 1, "MISS": 1}
    assert len(summary["timeline"]) == 10
    assert summary["timeline"][1]["stale"] == 1


def test_modes_without_a_channel_report_null_lag() -> None:
    summary = summarize(_raw("ttl"), None)
    assert summary["invalidation_lag_ms"]["p99"] is None
    assert summary["invalidation_nines"] is None


def test_compare_table_and_chart(tmp_path: Path) -> None:
    summaries = {
        mode: summarize(_raw(mode), [] if mode == "cdc" else None)
        for mode in ("cdc", "nocache", "ttl")
    }
    text = report.markdown(summaries)
    lines = text.splitlines()
    assert lines[0].startswith("| mode |")
    assert [line.split("|")[1].strip() for line in lines[2:5]] == ["nocache", "ttl", "cdc"]
    assert "lower than nocache" in text
    assert "cdc: changes captured with notify (PGBUST_CAPTURE)" in text
    png = tmp_path / "compare.png"
    report.chart(summaries, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_warmup_is_left_out_of_the_numbers_but_not_the_timeline() -> None:
    summary = summarize(_raw(), [], warmup_s=1.5)
    assert summary["reads"] == 2  # the reads sent at 100.1 and 101.2 are warm-up
    assert summary["writes"] == 0  # both writes were sent before 101.5
    assert summary["duration_s"] == pytest.approx(8.5)
    assert summary["warmup_s"] == 1.5
    assert sum(row["reads"] for row in summary["timeline"]) == 4


def test_rounds_count_as_one_run_laid_end_to_end() -> None:
    from loadtest.stats import summarize_rounds

    first = _raw()
    second = _raw().shifted(500.0)  # a later round of the same mode
    messages = [Received(100.011, ("product:1",)), Received(101.02, ("product:2",))]
    later = [Received(m.at + 500.0, m.keys) for m in messages]
    summary = summarize_rounds([(first, messages), (second, later)])
    assert summary["duration_s"] == pytest.approx(20.0)
    assert summary["reads"] == 8
    assert summary["writes"] == 4
    assert summary["read_rps"] == pytest.approx(0.4)
    assert summary["invalidation_lag_ms"]["max"] == pytest.approx(10.0, abs=0.01)
    assert summary["writes_never_invalidated"] == 0
    assert summary["errors"] == 2
    assert len(summary["timeline"]) == 20


def test_headline_compares_modes_round_by_round() -> None:
    def mode(name: str, p50s: list[float], loads: list[float]) -> dict[str, object]:
        rounds = [
            {"read_p50_ms": p, "read_rps": 1.0, "cache_hit_ratio": 0.5, "load_average": load}
            for p, load in zip(p50s, loads, strict=True)
        ]
        return {
            "mode": name,
            "read_latency_ms": {"p50": sum(p50s) / len(p50s)},
            "by_round": rounds,
            "stale_reads": 0,
            "stale_ratio": 0.0,
            "staleness_ms": {"max": 0.0},
        }

    notes = report.headline(
        {"nocache": mode("nocache", [8.0, 6.0], [2, 5]), "ttl": mode("ttl", [2.0, 12.0], [3, 6])}
    )
    assert "ttl: read p50 per round, nocache / ttl: 4.00x (load 2 / 3), 0.50x (load 5 / 6)" in notes


def test_the_table_and_headline_name_the_capture_of_the_cdc_mode() -> None:
    summaries = {
        mode: summarize(_raw(mode), [] if mode == "cdc" else None) for mode in ("nocache", "cdc")
    }
    summaries["cdc"].update(capture="wal", settings={"capture": "wal (slot pgbust_demo)"})
    text = report.markdown(summaries)
    assert [line.split("|")[1].strip() for line in text.splitlines()[2:4]] == [
        "nocache",
        "cdc (wal)",
    ]
    assert "cdc: changes captured with wal (slot pgbust_demo) (PGBUST_CAPTURE)" in text
