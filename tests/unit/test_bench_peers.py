"""The pure parts of `python -m bench peers`: round order, freshness bounds, summaries."""

from __future__ import annotations

from bench.peers import (
    CDC,
    PEER,
    Seen,
    bounds_ms,
    counter,
    interleaved,
    ratios,
    summarize_freshness,
    summarize_load,
)


def test_rounds_interleave_mirrored_so_load_drift_hits_every_system_alike() -> None:
    order = [name for _, name in interleaved(["A", "B", "C", "D"], 2)]
    assert order == ["A", "B", "C", "D", "D", "C", "B", "A"]
    assert [r for r, _ in interleaved(["A", "B"], 2)] == [0, 0, 1, 1]


def test_freshness_is_bracketed_by_last_stale_send_and_first_fresh_arrival() -> None:
    acked = 10.0
    seen = [Seen(fresh_at=10.004, stale_sent_at=10.001, polls=3), Seen(10.012, 10.006, 5)]
    assert bounds_ms(acked, seen) == (6.0, 12.0)
    # fresh on the first poll of both: nothing stale was seen, the lower bound is 0
    assert bounds_ms(acked, [Seen(10.002, None, 1), Seen(10.003, None, 1)]) == (0.0, 3.0)
    # one instance never served the new version: no sample, a timeout
    assert bounds_ms(acked, [Seen(10.002, None, 1), Seen(None, 12.0, 90)]) is None


def _load_round(round_no: int, system: str, rps: float, p99: float) -> dict[str, object]:
    return {
        "round": round_no,
        "system": system,
        "requests_per_s": rps,
        "p50_ms": 1.0,
        "p99_ms": p99,
        "in_process_hit_share": 0.4,
        "db_read_share": 0.5,
        "cpu_ms_per_request": 0.4,
        "instances_cpu_ms_per_request": 0.3,
        "write_tps": 100.0,
        "loadavg_1m": 1.0 + round_no,
        "errors": 0,
        "requests": 1000,
    }


def test_cdc_over_peer_ratios_of_the_means_and_round_by_round() -> None:
    rounds = [
        _load_round(0, CDC, 6000, 40),
        _load_round(0, PEER, 5000, 20),
        _load_round(1, PEER, 3000, 30),
        _load_round(1, CDC, 6000, 20),
    ]
    load = summarize_load(rounds)
    assert load[CDC]["requests_per_s"] == 6000 and load[PEER]["requests_per_s"] == 4000
    result = ratios(load, rounds)
    assert result["cdc_over_peer_requests_per_s"] == 1.5
    assert result["cdc_over_peer_p99"] == 1.2
    assert [r["requests_per_s"] for r in result["per_round"]] == [1.2, 2.0]
    assert result["per_round"][1]["loadavg_1m"] == [2.0, 2.0]


def test_freshness_pools_every_probe_and_counts_timeouts_and_probe_load() -> None:
    def round_(lags: list[float], timeouts: int) -> dict[str, object]:
        probe = {"lags_ms": lags, "lower_bounds_ms": lags, "timeouts": timeouts, "requests": 50}
        return {**_load_round(0, CDC, 5000, 10), "probe": probe}

    summary = summarize_freshness([round_([1.0, 2.0], 0), round_([3.0], 1)])
    assert summary[CDC]["served_by_both_ms"]["n"] == 3
    assert summary[CDC]["served_by_both_ms"]["max"] == 3.0
    assert summary[CDC]["timeouts"] == 1
    assert summary[CDC]["probe_request_share"] == 0.05


def test_counters_are_read_from_the_api_metrics_and_zero_before_first_use() -> None:
    text = (
        "# HELP x\npgbust_api_db_loads_total 1234.0\npgbust_api_db_loads_created 1.7e9\n"
        'pgbust_api_cache_hits_total{tier="l1"} 56.0\n'
    )
    assert counter(text, "pgbust_api_db_loads_total") == 1234.0
    assert counter(text, 'pgbust_api_cache_hits_total{tier="l1"}') == 56.0
    assert counter(text, 'pgbust_api_cache_hits_total{tier="l2"}') == 0.0
