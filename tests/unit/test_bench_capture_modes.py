"""The pure part of `python -m bench invalidator`'s SIGKILL benchmark: what a kill cost."""

from __future__ import annotations

from bench.capture_modes import kill_outcome


def test_a_written_entry_still_cached_counts_as_missed_and_only_if_it_was_cached() -> None:
    outcome = kill_outcome(filled=[1, 2, 3, 4], written=[2, 3, 9], cached=[1, 3, 4])
    assert outcome["filled_and_written"] == 2  # 2 and 3; 9 was never cached
    assert outcome["writes_missed"] == 1  # 3: written, still cached
    assert outcome["untouched"] == 2  # 1 and 4
    assert outcome["hit_ratio_untouched"] == 1.0


def test_a_flush_loses_every_untouched_entry_and_misses_nothing() -> None:
    outcome = kill_outcome(filled=range(1, 11), written=[5, 5, 6], cached=[])
    assert outcome["writes_missed"] == 0
    assert outcome["untouched"] == 8
    assert outcome["hit_ratio_untouched"] == 0.0
