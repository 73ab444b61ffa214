"""The run plan and the key skew (no servers)."""

from __future__ import annotations

import random

import pytest

from loadtest.plan import Plan, PlanError, make_plan
from loadtest.settings import Settings
from loadtest.skew import ZipfSampler


def _plan(**overrides: object) -> Plan:
    settings = Settings(**overrides)  # type: ignore[arg-type]
    return make_plan(
        settings,
        mode="cdc",
        api_urls=["http://a", "http://b"],
        api_token="t",
        raw_out="/tmp/raw.json",
        product_ids=(1, 100_000),
        category_ids=(1, 20),
    )


def test_default_plan_writes_a_third_out_of_band_and_reads_nine_per_write() -> None:
    plan = _plan()
    assert plan.api_write_rps + plan.oob_write_rps == pytest.approx(120.0)
    assert plan.oob_write_rps == pytest.approx(40.0)
    assert plan.read_rps == pytest.approx(1080.0)
    assert plan.readers + plan.api_writers + plan.oob_writers == plan.users
    assert plan.user_classes == ["ReaderUser", "ApiWriterUser", "OobWriterUser"]


def test_plan_survives_its_json_round_trip() -> None:
    plan = _plan()
    assert Plan.from_json(plan.to_json()) == plan


def test_no_out_of_band_writers_when_the_fraction_is_zero() -> None:
    plan = _plan(loadtest_oob_fraction=0.0)
    assert plan.oob_writers == 0
    assert "OobWriterUser" not in plan.user_classes


def test_too_few_users_for_the_writers_is_an_error_naming_the_setting() -> None:
    with pytest.raises(PlanError, match="PGBUST_LOADTEST_USERS"):
        _plan(loadtest_users=4, loadtest_write_rps=500.0)


def test_zipf_sampler_is_skewed_towards_low_ids_and_stays_in_range() -> None:
    sampler = ZipfSampler(10, 1009, s=1.0, rng=random.Random(7))
    draws = [sampler() for _ in range(20_000)]
    assert min(draws) >= 10 and max(draws) <= 1009
    top_share = sum(1 for d in draws if d < 20) / len(draws)
    assert top_share == pytest.approx(sampler.share_of_top(10), abs=0.02)
    assert top_share > 0.3  # ten of a thousand ids get about 39% of the traffic


def test_zipf_sampler_with_s_zero_is_uniform() -> None:
    sampler = ZipfSampler(1, 100, s=0.0, rng=random.Random(1))
    assert sampler.share_of_top(10) == pytest.approx(0.1)
    assert 1 <= sampler() <= 100
