"""From pgoutput messages to Changes (pgbust/wal_changes.py): recorded real messages and
hand-made ones for identities the recording does not cover."""

from __future__ import annotations

import json
from pathlib import Path

from pgbust import pgoutput as po
from pgbust.declaration import parse
from pgbust.rules import Change, RowChange, explain
from pgbust.wal_changes import Transaction, Transactions

RECORDED = json.loads((Path(__file__).parent / "data" / "pgoutput.json").read_text())
DECLARATION = parse(
    """
[tables."public.items"]
key = ["id"]
depends = ["group_id"]
entries = ["item:{id}"]
tags = ["group:{group_id}", { tag = "group:{group_id}:names", columns = ["name"] }]

[tables."public.keyed"]
key = ["id"]
depends = ["group_id"]
entries = ["keyed:{id}"]
max_rows = 3
"""
)


def _replay() -> dict[str, Transaction]:
    """Every recorded step through one Transactions, as one session would see them."""
    transactions = Transactions(DECLARATION)
    out: dict[str, Transaction] = {}
    for step in RECORDED:
        for hexed in step["messages"]:
            done = transactions.feed(po.decode(bytes.fromhex(hexed)))
            if done is not None:
                out[step["sql"]] = done
    return out


def _step(prefix: str) -> Transaction:
    return next(tx for sql, tx in _replay().items() if sql.startswith(prefix))


def test_inserts_carry_key_and_depends_values_as_text_with_the_commit_lsn_and_time() -> None:
    tx = _step("INSERT INTO items")
    (change,) = tx.changes
    assert change == Change(
        "public.items",
        "I",
        (
            RowChange("I", new={"id": "1", "group_id": "10"}),
            RowChange("I", new={"id": "2", "group_id": "10"}),
        ),
        ts_us=tx.commit_ts_us,
        lsn=tx.end_lsn,
    )
    assert tx.problems == ()


def test_a_row_moving_group_names_old_and_new_group_under_full_identity() -> None:
    (change,) = _step("UPDATE items SET group_id").changes
    (row,) = change.rows
    assert (row.old, row.new) == ({"id": "1", "group_id": "10"}, {"id": "1", "group_id": "11"})
    assert row.changed == frozenset()  # the watched column (name) did not change
    targets, _ = explain(DECLARATION, change)
    assert targets.tags == {"group:10", "group:11", "group:10:names", "group:11:names"}
    assert targets.keys == {"item:1"}


def test_changed_watched_columns_are_known_under_full_identity() -> None:
    (change,) = _step("UPDATE items SET name").changes
    assert change.rows[0].changed == frozenset({"name"})
    targets, _ = explain(DECLARATION, change)
    assert "group:10:names" in targets.tags


def test_delete_under_full_identity_has_the_old_values() -> None:
    (change,) = _step("DELETE FROM items").changes
    assert change.rows == (RowChange("D", old={"id": "1", "group_id": "11"}),)


def test_default_identity_cannot_know_the_old_depends_value_so_the_table_is_invalidated() -> None:
    for prefix in ("UPDATE keyed SET group_id", "UPDATE keyed SET id", "DELETE FROM keyed"):
        tx = _step(prefix)
        (change,) = tx.changes
        assert change.table_wide and change.table == "public.keyed", prefix
        assert tx.problems == ("old_values_unknown",), prefix


def test_truncate_is_table_wide_for_every_table() -> None:
    tx = _step("TRUNCATE")
    assert {(c.table, c.op, c.table_wide) for c in tx.changes} == {
        ("public.items", "T", True),
        ("public.keyed", "T", True),
    }


def test_a_pgbust_logical_message_invalidates_its_table() -> None:
    (change,) = _step("SELECT pg_logical_emit_message").changes
    assert (change.table, change.table_wide) == ("public.items", True)


def _relation(
    oid: int, name: str, identity: str, flags: list[bool], extra: str = ""
) -> po.Relation:
    names = ["id", "group_id", "note" + extra]
    return po.Relation(
        oid, "public", name, identity, tuple(po.Column(n, 20, -1, f) for n, f in zip(names, flags))
    )


def _tx(transactions: Transactions, *messages: po.Decoded) -> Transaction:
    transactions.feed(po.Begin(100, 1_700_000_000_000_000, 7))
    for message in messages:
        assert transactions.feed(message) is None
    done = transactions.feed(po.Commit(0, 100, 148, 1_700_000_000_000_000))
    assert done is not None
    return done


def test_an_index_identity_over_key_and_depends_gives_old_values_from_the_key_tuple() -> None:
    t = Transactions(DECLARATION)
    relation = _relation(1, "keyed", "i", [True, True, False])
    tx = _tx(
        t,
        relation,
        po.Update(1, "K", ("1", "5", None), ("1", "6", "n")),  # the index columns changed
        po.Update(1, None, None, ("2", "7", "n")),  # they did not
    )
    (change,) = tx.changes
    assert [(r.old, r.new) for r in change.rows] == [
        ({"id": "1", "group_id": "5"}, {"id": "1", "group_id": "6"}),
        ({"id": "2", "group_id": "7"}, {"id": "2", "group_id": "7"}),
    ]
    assert all(r.changed == frozenset() for r in change.rows)  # keyed watches no column


def test_full_identity_without_an_old_row_is_not_trusted() -> None:
    """A partition attached later keeps its own identity: no 'O' although the root says FULL."""
    t = Transactions(DECLARATION)
    tx = _tx(
        t, _relation(1, "keyed", "f", [True, True, True]), po.Update(1, None, None, ("1", "6", "n"))
    )
    assert tx.changes[0].table_wide and tx.problems == ("old_values_unknown",)


def test_an_unchanged_toast_value_of_a_key_column_is_taken_from_the_old_row_or_widens() -> None:
    t = Transactions(DECLARATION)
    relation = _relation(1, "keyed", "f", [True, True, True])
    tx = _tx(t, relation, po.Update(1, "O", ("1", "5", "n"), ("1", po.UNCHANGED, "m")))
    assert tx.changes[0].rows[0].new == {"id": "1", "group_id": "5"}
    tx = _tx(t, po.Update(1, "O", ("1", po.UNCHANGED, "n"), ("1", po.UNCHANGED, "m")))
    assert tx.changes[0].table_wide


def test_more_rows_than_max_rows_become_one_table_wide_change() -> None:
    t = Transactions(DECLARATION)
    relation = _relation(1, "keyed", "f", [True, True, True])
    tx = _tx(t, relation, *(po.Insert(1, (str(i), "1", "n")) for i in range(10)))
    assert [(c.table, c.table_wide, c.rows) for c in tx.changes] == [("public.keyed", True, ())]
    assert tx.problems == ()  # a bulk change is no problem, just wide


def test_an_undeclared_relation_is_invalidated_wide_and_counted() -> None:
    t = Transactions(DECLARATION)
    tx = _tx(
        t,
        _relation(9, "other", "f", [True] * 3),
        po.Insert(9, ("1", "2", "3")),
        po.Insert(9, ("2", "2", "3")),
    )
    assert [(c.table, c.table_wide) for c in tx.changes] == [("public.other", True)]
    assert tx.problems == ("undeclared_table",)
    targets, _ = explain(DECLARATION, tx.changes[0])
    assert targets.flush


def test_a_changed_relation_shape_invalidates_the_table_but_a_resent_same_one_does_not() -> None:
    t = Transactions(DECLARATION)
    relation = _relation(1, "keyed", "f", [True, True, True])
    _tx(t, relation, po.Insert(1, ("1", "1", "n")))
    same = _tx(t, relation, po.Insert(1, ("2", "1", "n")))
    assert not any(c.table_wide for c in same.changes)
    changed = _tx(
        t, _relation(1, "keyed", "f", [True, True, True], extra="2"), po.Insert(1, ("3", "1", "n"))
    )
    assert [(c.table, c.op, c.table_wide) for c in changed.changes] == [("public.keyed", "R", True)]


def test_undecodable_message_or_broken_framing_flushes_everything() -> None:
    t = Transactions(DECLARATION)
    t.feed(po.Begin(1, 0, 1))
    t.malformed("undecodable_message")
    tx = t.feed(po.Commit(0, 1, 2, 0))
    assert tx is not None and tx.problems == ("undecodable_message",)
    assert explain(DECLARATION, tx.changes[0])[0].flush
    orphan = Transactions(DECLARATION).feed(po.Commit(0, 1, 2, 0))
    assert orphan is not None and orphan.problems == ("commit_without_begin",)
    assert explain(DECLARATION, orphan.changes[0])[0].flush


def test_consecutive_rows_of_one_kind_share_a_change_and_kinds_keep_their_order() -> None:
    t = Transactions(DECLARATION)
    relation = _relation(1, "keyed", "f", [True, True, True])
    tx = _tx(
        t,
        relation,
        po.Insert(1, ("1", "1", "n")),
        po.Insert(1, ("2", "1", "n")),
        po.Delete(1, "O", ("1", "1", "n")),
    )
    assert [(c.op, len(c.rows)) for c in tx.changes] == [("I", 2), ("D", 1)]
    assert t.in_transaction is False
