"""The chaos load's judge (tests/support/load.py): a lag edge is stale, yet not a resurrection."""

from __future__ import annotations

from tests.support.load import LoadStats, ReadJudge

BACK = "redis back"


def judged(*writes: tuple[int, float, str], mark_at: float | None = None) -> ReadJudge:
    judge = ReadJudge(LoadStats())
    for version, acked_at, writer in writes:
        judge.record_write(7, version, acked_at, writer)
    if mark_at is not None:
        judge.mark(BACK, mark_at)
    return judge


def test_a_read_behind_a_commit_acknowledged_after_the_restart_is_stale_not_outdated() -> None:
    """The flaky 4b failure: an out-of-band commit acknowledged 1 ms before the read, its
    invalidation not yet applied: stale (by 1 ms), but nothing from before the restart."""
    judge = judged((1, 0.0, "oob"), (2, 10.000, "oob"), mark_at=5.0)
    stale = judge.judge("api-1", "L2", 7, 1, sent_at=10.001, in_fault=False)
    assert stale is not None and round(stale.staleness_ms, 3) == 1.0
    assert stale.writer == "oob" and stale.outdated_at == ()
    assert judge.stats.stale_by_tier == {"L2": 1}
    assert judge.stats.stale_outdated_at[BACK] == 0


def test_a_value_superseded_before_the_restart_and_served_after_it_is_outdated() -> None:
    """What an old snapshot would resurrect: v1 was replaced by v2 before Redis came back."""
    judge = judged((1, 0.0, "oob"), (2, 3.0, "api"), mark_at=5.0)
    stale = judge.judge("api-2", "L2", 7, 1, sent_at=6.0, in_fault=True)
    assert stale is not None and stale.outdated_at == (BACK,)
    assert judge.stats.stale_outdated_at[BACK] == 1
    assert judge.stats.stale_reads_during_fault == 1


def test_reads_before_the_mark_and_fresh_reads_count_for_no_mark() -> None:
    judge = judged((1, 0.0, "oob"), (2, 3.0, "oob"), mark_at=5.0)
    assert judge.judge("api-1", "L1", 7, 1, sent_at=4.0, in_fault=False) is not None
    assert judge.judge("api-1", "L1", 7, 2, sent_at=6.0, in_fault=False) is None
    assert judge.judge("api-1", "L1", 7, 1, sent_at=2.0, in_fault=False) is None  # before v2
    assert judge.stats.stale_reads == 1
    assert judge.stats.stale_outdated_at[BACK] == 0
