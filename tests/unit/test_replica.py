"""The read replicas' pure decision (pgbust/replica.py): which server a leased load reads."""

from __future__ import annotations

import pytest

from invalidator.app import known_lsn
from invalidator.batcher import Batch
from invalidator.wal_source import WalBatch
from pgbust import replica
from pgbust.protocol import Lease, parse_get_or_lease
from tests.support.demo import DEMO


def test_lsn_text_round_trips_and_orders_like_postgres() -> None:
    assert replica.parse_lsn("0/0") == 0
    assert replica.parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert replica.lsn_text(replica.parse_lsn("16/B374D848")) == "16/B374D848"
    # the high half counts first: 1/0 is past 0/FFFFFFFF
    assert replica.parse_lsn("1/0") > replica.parse_lsn("0/FFFFFFFF")
    with pytest.raises(ValueError):
        replica.parse_lsn("16B374D848")


def test_the_marker_is_sixteen_hex_digits_and_zero_is_not_an_lsn() -> None:
    assert replica.marker_text(replica.parse_lsn("16/B374D848")) == "00000016B374D848"
    assert replica.parse_marker(b"00000016B374D848") == replica.parse_lsn("16/B374D848")
    with pytest.raises(ValueError):
        replica.marker_text(replica.UNKNOWN_LSN)


@pytest.mark.parametrize("raw", [None, b"", "", b"not hex", b"0000000000000000"])
def test_a_missing_or_unreadable_marker_is_unknown(raw: bytes | str | None) -> None:
    assert replica.parse_marker(raw) is None


def test_a_replica_that_replayed_up_to_the_marker_serves_the_load() -> None:
    assert replica.choose(100, 100) == replica.Choice("replica", "caught_up")
    assert replica.choose(100, 101).server == "replica"


def test_a_replica_behind_the_marker_by_one_byte_sends_the_load_to_the_primary() -> None:
    assert replica.choose(100, 99) == replica.Choice("primary", "behind")


def test_no_marker_means_the_primary_whatever_the_replica_replayed() -> None:
    # evicted, lost with a Redis restart or flush, or no invalidator keeps it: fail safe
    assert replica.choose(None, 10**12) == replica.Choice("primary", "no_marker")


def test_a_server_that_is_not_replaying_is_not_trusted_as_a_replica() -> None:
    # pg_last_wal_replay_lsn() is NULL outside recovery (a promoted replica, a wrong URL)
    assert replica.choose(100, None) == replica.Choice("primary", "not_replaying")


def test_a_granted_lease_carries_the_marker_read_with_it() -> None:
    assert parse_get_or_lease([2, b"1|", b"7", b"00000000000000FF"], "tok") == Lease(
        "tok", "1|", 7, 255
    )
    assert parse_get_or_lease([2, b"1|", b"7", b""], "tok").marker is None  # type: ignore[union-attr]
    assert parse_get_or_lease([2, b"1|", b"7"], "tok").marker is None  # type: ignore[union-attr]


def test_the_invalidator_marks_a_wal_batch_with_its_newest_commit_end_and_reads_the_rest() -> None:
    wal = Batch()
    wal.add_wal(WalBatch((), end_lsn=300, commit_ts_us=0), DEMO)
    wal.add_wal(WalBatch((), end_lsn=200, commit_ts_us=0), DEMO)
    assert known_lsn(wal) == 300
    # a flush covers more than the batch's transactions; NOTIFY events carry no LSN
    wal.add_flush("test", "a flush")
    assert known_lsn(wal) is None
    assert known_lsn(Batch()) is None
