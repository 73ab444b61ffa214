"""The staleness oracle judged on synthetic histories (no servers)."""

from __future__ import annotations

import pytest

from loadtest.oracle import Oracle


@pytest.fixture
def oracle() -> Oracle:
    o = Oracle()
    o.record_ack(1, version=2, ack_time=10.0)
    o.record_ack(1, version=3, ack_time=20.0)
    return o


def test_read_of_a_product_never_written_is_fresh(oracle: Oracle) -> None:
    assert not oracle.judge(99, version=1, sent_at=100.0).stale


def test_read_returning_the_newest_acknowledged_version_is_fresh(oracle: Oracle) -> None:
    verdict = oracle.judge(1, version=3, sent_at=25.0)
    assert not verdict.stale
    assert verdict.newest_acked == 3


def test_read_returning_an_older_version_after_the_ack_is_stale(oracle: Oracle) -> None:
    verdict = oracle.judge(1, version=2, sent_at=20.5)
    assert verdict.stale
    assert verdict.staleness_s == pytest.approx(0.5)
    assert verdict.newest_acked == 3


def test_staleness_counts_from_the_first_newer_version_not_the_newest(oracle: Oracle) -> None:
    verdict = oracle.judge(1, version=1, sent_at=30.0)
    assert verdict.stale
    assert verdict.staleness_s == pytest.approx(20.0)  # v2 was acked at 10


def test_read_sent_exactly_at_the_ack_is_not_stale(oracle: Oracle) -> None:
    """Edge of commit: the writer had not been told yet, so nobody could expect the new value."""
    assert not oracle.judge(1, version=2, sent_at=20.0).stale


def test_read_sent_just_after_the_ack_is_stale(oracle: Oracle) -> None:
    verdict = oracle.judge(1, version=2, sent_at=20.000001)
    assert verdict.stale
    assert verdict.staleness_s == pytest.approx(1e-6)


def test_old_version_while_the_commit_is_unacknowledged_is_fresh(oracle: Oracle) -> None:
    """A write in flight (committed maybe, not acknowledged) does not make reads stale."""
    assert not oracle.judge(1, version=2, sent_at=19.999).stale


def test_read_of_a_version_newer_than_any_ack_is_fresh(oracle: Oracle) -> None:
    assert not oracle.judge(1, version=4, sent_at=20.5).stale


def test_out_of_order_acks_use_the_earliest_newer_ack() -> None:
    o = Oracle()
    o.record_ack(7, version=3, ack_time=5.0)  # v3 acknowledged first
    o.record_ack(7, version=2, ack_time=6.0)  # v2's writer heard back later
    verdict = o.judge(7, version=1, sent_at=7.0)
    assert verdict.stale
    assert verdict.staleness_s == pytest.approx(2.0)  # since v3's ack at 5.0
    assert verdict.newest_acked == 3
    assert o.judge(7, version=2, sent_at=5.5).stale  # v3 known at 5.5
    assert not o.judge(7, version=3, sent_at=7.0).stale


def test_acks_recorded_late_still_order_by_ack_time() -> None:
    o = Oracle()
    o.record_ack(1, version=5, ack_time=50.0)
    o.record_ack(1, version=4, ack_time=40.0)  # recorded after v5, acknowledged before
    assert o.judge(1, version=3, sent_at=45.0).stale
    assert o.judge(1, version=3, sent_at=45.0).staleness_s == pytest.approx(5.0)
    assert not o.judge(1, version=4, sent_at=45.0).stale
    assert o.judge(1, version=4, sent_at=51.0).staleness_s == pytest.approx(1.0)


def test_a_page_is_stale_when_any_item_is_and_reports_the_worst() -> None:
    o = Oracle()
    o.record_ack(1, version=2, ack_time=1.0)
    o.record_ack(2, version=2, ack_time=3.0)
    verdict = o.judge_many([(1, 1), (2, 1), (3, 1)], sent_at=4.0)
    assert verdict.stale
    assert verdict.staleness_s == pytest.approx(3.0)
    assert not o.judge_many([(1, 2), (2, 2)], sent_at=4.0).stale


def test_many_versions_of_a_hot_product_judge_correctly() -> None:
    o = Oracle()
    for version in range(2, 1002):
        o.record_ack(1, version=version, ack_time=float(version))
    for version in (1, 500, 998):
        verdict = o.judge(1, version=version, sent_at=1000.5)
        assert verdict.stale
        assert verdict.staleness_s == pytest.approx(1000.5 - (version + 1))
    assert not o.judge(1, version=1000, sent_at=1000.5).stale


def test_a_stale_read_names_the_writer_of_the_first_newer_version() -> None:
    o = Oracle()
    o.record_ack(1, version=2, ack_time=1.0, writer="oob")
    o.record_ack(1, version=3, ack_time=2.0, writer="api")
    assert o.judge(1, version=1, sent_at=3.0).cause == "oob"
    assert o.judge(1, version=2, sent_at=3.0).cause == "api"
