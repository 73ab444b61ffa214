"""The pure part of `python -m bench redis-cluster`'s end-to-end half: per-round ratios."""

from __future__ import annotations

from bench.redis_cluster_e2e import CLUSTER, ONE, backend_settings, cluster_over_one, summarize


def _burst(round_no: int, events_per_s: float, p99: float) -> dict[str, object]:
    lag = {"ack_to_delete_ms": {"p50": p99 / 4, "p99": p99}}
    return {"round": round_no, "burst": {"events_per_s": events_per_s}, "lag": lag}


def test_a_ratio_pairs_each_cluster_round_with_the_one_redis_round_run_beside_it() -> None:
    # round 1 ran on a busier host: both backends slower; its ratio is still 0.5
    samples = {
        ONE: [_burst(0, 100, 4), _burst(1, 50, 8)],
        CLUSTER: [_burst(1, 25, 8), _burst(0, 50, 6)],
    }
    ratio = cluster_over_one(samples, ("burst", "events_per_s"))
    assert sorted(ratio["per_round"]) == [0.5, 0.5]
    assert ratio["median"] == 0.5
    assert cluster_over_one(samples, ("lag", "ack_to_delete_ms", "p99"))["per_round"] == [1.0, 1.5]


def test_the_table_has_the_invalidators_rows_then_two_per_api_scenario() -> None:
    invalidator = {ONE: [_burst(0, 20_000, 4)], CLUSTER: [_burst(0, 8_000, 6)]}
    wrk = {"requests_per_s": 1000.0, "p99_ms": 2.0, "errors": 0}
    api = {"product, L1 hit": {ONE: [{"round": 0, **wrk}], CLUSTER: [{"round": 0, **wrk}]}}
    rows, ratios = summarize(invalidator, api)
    assert [row[0] for row in rows] == [
        "invalidator: burst, events/s",
        "invalidator: ack -> deleted p50 ms at 1,000 writes/s",
        "invalidator: ack -> deleted p99 ms at 1,000 writes/s",
        "API: product, L1 hit, req/s",
        "API: product, L1 hit, p99 ms",
    ]
    assert rows[0][1:] == ["20,000", "8,000", "0.40"]
    assert rows[2][1:] == ["4.00", "6.00", "1.50"]
    assert ratios["API: product, L1 hit, req/s"]["median"] == 1.0


def test_on_the_cluster_a_component_gets_the_flag_and_a_broker_beside_the_cluster() -> None:
    single, cluster = "redis://127.0.0.1:7000/0", "redis://127.0.0.1:7100/0"
    assert backend_settings(ONE, single, cluster) == (single, {})
    on_cluster = backend_settings(CLUSTER, single, cluster)
    assert on_cluster == (
        cluster,
        {"redis_cluster": True, "celery_broker_url": "redis://127.0.0.1:7000/1"},
    )
