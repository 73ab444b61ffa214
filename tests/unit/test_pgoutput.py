"""The pgoutput decoder on bytes recorded from a real server (tests/unit/data/pgoutput.json,
made by tests/support/pgoutput_record.py) and on hand-built edge cases of the format."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pgbust import pgoutput as po

RECORDED = json.loads((Path(__file__).parent / "data" / "pgoutput.json").read_text())


def _messages(sql_prefix: str) -> list[po.Decoded]:
    for step in RECORDED:
        if step["sql"].startswith(sql_prefix):
            return [po.decode(bytes.fromhex(m)) for m in step["messages"]]
    raise AssertionError(f"no recorded step {sql_prefix!r}")


def test_every_recorded_message_decodes_and_each_transaction_is_framed_by_begin_and_commit() -> (
    None
):
    for step in RECORDED:
        decoded = [po.decode(bytes.fromhex(m)) for m in step["messages"]]
        assert isinstance(decoded[0], po.Begin), step["sql"]
        assert isinstance(decoded[-1], po.Commit), step["sql"]
        assert decoded[0].final_lsn == decoded[-1].commit_lsn
        assert decoded[-1].end_lsn > decoded[-1].commit_lsn
        assert decoded[0].commit_ts_us == decoded[-1].commit_ts_us


def test_relation_names_columns_types_and_the_replica_identity() -> None:
    relation = next(m for m in _messages("INSERT INTO items") if isinstance(m, po.Relation))
    assert (relation.namespace, relation.name, relation.qualified) == (
        "public",
        "items",
        "public.items",
    )
    assert relation.replica_identity == "f"
    assert [(c.name, c.type_oid, c.identity) for c in relation.columns] == [
        ("id", 20, True), ("group_id", 20, True), ("name", 25, True), ("body", 25, True),
    ]  # fmt: skip
    keyed = next(m for m in _messages("INSERT INTO keyed") if isinstance(m, po.Relation))
    assert keyed.replica_identity == "d"
    assert [c.identity for c in keyed.columns] == [True, False, False]


def test_insert_values_are_text_with_null_and_multibyte_utf8() -> None:
    inserts = [m for m in _messages("INSERT INTO items") if isinstance(m, po.Insert)]
    assert inserts[0].new == ("1", "10", "a", None)
    assert inserts[1].new[:3] == ("2", "10", "é ünïcode")
    assert inserts[1].new[3] == "x" * 3000


def test_update_under_full_identity_carries_the_whole_old_row() -> None:
    (update,) = [m for m in _messages("UPDATE items SET group_id") if isinstance(m, po.Update)]
    assert update.old_kind == "O"
    assert update.old == ("1", "10", "a", None)
    assert update.new == ("1", "11", "a", None)


def test_update_under_default_identity_sends_no_old_row_and_unchanged_toast() -> None:
    (update,) = [m for m in _messages("UPDATE keyed SET group_id") if isinstance(m, po.Update)]
    assert update.old_kind is None and update.old is None
    assert update.new == ("1", "6", po.UNCHANGED)


def test_update_of_the_key_sends_the_old_key_only() -> None:
    (update,) = [m for m in _messages("UPDATE keyed SET id") if isinstance(m, po.Update)]
    assert update.old_kind == "K"
    assert update.old == ("1", None, None)
    assert update.new[:2] == ("2", "6")


def test_delete_carries_the_old_key_or_row() -> None:
    (full,) = [m for m in _messages("DELETE FROM items") if isinstance(m, po.Delete)]
    assert (full.old_kind, full.old) == ("O", ("1", "11", "a", None))
    (key,) = [m for m in _messages("DELETE FROM keyed") if isinstance(m, po.Delete)]
    assert (key.old_kind, key.old) == ("K", ("2", None, None))


def test_truncate_names_every_relation() -> None:
    messages = _messages("TRUNCATE")
    oids = {m.oid for m in messages if isinstance(m, po.Relation)}
    (truncate,) = [m for m in messages if isinstance(m, po.Truncate)]
    assert set(truncate.relation_oids) == oids and len(oids) == 2


def test_logical_message_has_prefix_and_content() -> None:
    (message,) = [
        m for m in _messages("SELECT pg_logical_emit_message") if isinstance(m, po.Message)
    ]
    assert message == po.Message(True, message.lsn, "pgbust", b"public.items")


def test_origin_and_type_messages_built_per_the_documented_format() -> None:
    assert po.decode(b"O" + struct.pack(">Q", 77) + b"node_a\0") == po.Origin(77, "node_a")
    assert po.decode(b"Y" + struct.pack(">I", 16999) + b"public\0mood\0") == po.Type(
        16999, "public", "mood"
    )


def test_timestamps_are_unix_microseconds() -> None:
    begin = po.decode(b"B" + struct.pack(">QqI", 1, 0, 5))
    assert isinstance(begin, po.Begin)
    assert begin.commit_ts_us == 946_684_800_000_000  # 2000-01-01 in Unix µs


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Z",  # unknown type
        b"B" + struct.pack(">Q", 1),  # too short
        b"B" + struct.pack(">QqI", 1, 2, 3) + b"extra",  # bytes left over
        b"I" + struct.pack(">I", 1) + b"X",  # not a new tuple
        b"I" + struct.pack(">IcH", 1, b"N", 1) + b"t" + struct.pack(">I", 50) + b"short",
        b"I" + struct.pack(">IcH", 1, b"N", 1) + b"q",  # unknown value kind
        b"I" + struct.pack(">IcH", 1, b"N", 1) + b"t" + struct.pack(">I", 2) + b"\xff\xfe",
        b"R" + struct.pack(">I", 1) + b"public",  # unterminated string
        b"D" + struct.pack(">I", 1) + b"N",  # delete without old key
        b"U" + struct.pack(">I", 1) + b"K" + struct.pack(">H", 0) + b"Q",
    ],
)
def test_malformed_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(po.DecodeError):
        po.decode(data)
