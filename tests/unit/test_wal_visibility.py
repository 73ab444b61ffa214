"""When a transaction read from the WAL may be invalidated: once a new snapshot sees it."""

from __future__ import annotations

import pytest

from invalidator.visibility import Snapshot, invisible


def test_a_transaction_below_xmin_is_visible() -> None:
    assert invisible({700}, Snapshot.parse("750:760:")) == set()


def test_a_transaction_still_in_the_proc_array_is_not_visible() -> None:
    snapshot = Snapshot.parse("750:760:751,755")
    assert invisible({751, 752, 755}, snapshot) == {751, 755}


def test_a_transaction_at_or_above_xmax_has_not_finished() -> None:
    assert invisible({760, 761}, Snapshot.parse("750:760:")) == {760, 761}


def test_32_bit_xids_are_placed_in_the_epoch_of_the_snapshot() -> None:
    epoch = 3 << 32
    snapshot = Snapshot.parse(f"{epoch + 5}:{epoch + 10}:{epoch + 7}")
    assert invisible({5, 7, 9, 10}, snapshot) == {7, 10}


def test_xids_just_before_an_epoch_boundary_belong_to_the_previous_epoch() -> None:
    epoch = 3 << 32
    snapshot = Snapshot.parse(f"{epoch - 20}:{epoch + 3}:{epoch - 10}")
    assert invisible({(1 << 32) - 10, (1 << 32) - 2, 1, 3}, snapshot) == {(1 << 32) - 10, 3}


def test_a_malformed_snapshot_is_refused() -> None:
    with pytest.raises(ValueError, match="not a pg_snapshot"):
        Snapshot.parse("garbage")
