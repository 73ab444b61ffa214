"""Batching: many changes merge into one set of targets; a flush swallows everything."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from invalidator.batcher import Batch
from invalidator.payload import parse
from pgbust import declaration
from pgbust.protocol import Targets

DEMO = declaration.load(Path(__file__).parents[2] / "pgbust.toml")


def add(batch: Batch, raw: str | bytes) -> None:
    batch.add(parse(raw), DEMO)


def event(pid: int, cid: int, ts: int) -> bytes:
    return orjson.dumps(
        {"v": 2, "t": "public.products", "op": "U", "ts": ts, "c": ["id", "category_id"],
         "r": [[str(pid), str(cid)]]}
    )  # fmt: skip


def test_events_merge_into_one_set_of_keys_and_tags() -> None:
    batch = Batch()
    for pid, cid, ts in [(1, 2, 30), (2, 2, 10), (1, 3, 20)]:
        add(batch, event(pid, cid, ts))
    assert len(batch) == 3
    assert batch.targets() == Targets(
        frozenset({"product:1", "product:2"}),
        frozenset(
            {"row:products:1", "row:products:2"}
            | {f"category:{c}:{what}" for c in (2, 3) for what in ("pages", "summary")}
        ),
    )
    assert batch.earliest_ts_us == 10
    assert batch.tables == {"public.products": 3}
    assert not batch.flush and batch.flush_kind is None


def test_a_malformed_event_turns_the_batch_into_a_labelled_flush() -> None:
    batch = Batch()
    add(batch, event(1, 2, 5))
    add(batch, b"garbage")
    add(batch, event(3, 4, 6))
    assert batch.targets() == Targets(flush=True)
    assert batch.flush_kind == "malformed"
    assert batch.problems == {"not_json": 1}
    assert "not_json" in batch.reason
    assert batch.timestamps == [5, 6]


def test_table_wide_and_unknown_table_are_told_apart() -> None:
    wide = Batch()
    add(wide, b'{"v":2,"t":"public.products","op":"T","ts":1,"all":true}')
    assert wide.flush_kind == "table_wide"
    unknown = Batch()
    add(unknown, b'{"v":2,"t":"public.orders","op":"I","ts":1,"c":["id"],"r":[[1]]}')
    assert unknown.flush_kind == "unknown_table"
    unkeyable = Batch()
    add(unkeyable, b'{"v":2,"t":"public.products","op":"I","ts":1,"c":["id"],"r":[["1"]]}')
    assert unkeyable.flush_kind == "unkeyable_row"


def test_merging_pending_batches_keeps_every_target_and_timestamp() -> None:
    pending = Batch()
    add(pending, event(1, 1, 100))
    later = Batch()
    add(later, event(2, 2, 50))
    pending.merge(later)
    assert pending.targets().keys == {"product:1", "product:2"}
    assert pending.earliest_ts_us == 50 and len(pending) == 2


def test_add_flush_keeps_the_first_reason_kind() -> None:
    batch = Batch()
    batch.add_flush("reconnect", "listener reconnect")
    add(batch, b"nope")
    assert batch.flush_kind == "reconnect"
    assert batch.targets() == Targets(flush=True)
    assert batch  # a flush with no events is still something to send


def test_a_merged_flush_keeps_every_cause_beside_the_first() -> None:
    pending = Batch()
    pending.add_flush("redis_back", "redis is back")
    later = Batch()
    later.add_flush("redis_topology", "redis cluster topology changed")
    add(later, b'{"v":2,"t":"public.products","op":"T","ts":1,"all":true}')
    pending.merge(later)
    assert pending.flush_kind == "redis_back"
    assert pending.flush_causes == {"redis_back", "redis_topology"}


UNKEYABLE_ROWS = {
    '"r":[[3,"4"]]': "unkeyable_not_text",
    '"r":[[3.5,"4"]]': "unkeyable_not_text",
    '"r":[[true,"4"]]': "unkeyable_not_text",
    '"r":[["3",4]]': "unkeyable_not_text",  # a depends column too
    '"r":[[null,"4"]]': "unkeyable_null",
    '"r":[["1","2"],["3",{}]]': "unkeyable_not_text",  # one bad row is enough
}


@pytest.mark.parametrize(("rows", "reason"), UNKEYABLE_ROWS.items())
def test_well_formed_rows_without_a_usable_key_flush_and_are_counted_as_malformed(
    rows: str, reason: str
) -> None:
    batch = Batch()
    add(batch, f'{{"v":2,"t":"public.products","op":"U","ts":7,"c":["id","category_id"],{rows}}}')
    assert batch.targets() == Targets(flush=True)
    assert batch.flush_kind == "unkeyable_row"
    assert batch.problems == {reason: 1}
    assert reason in batch.reason


def test_a_missing_key_column_is_counted_with_its_own_reason() -> None:
    batch = Batch()
    add(batch, b'{"v":2,"t":"public.categories","op":"U","ts":7,"c":["name"],"r":[["x"]]}')
    assert batch.targets() == Targets(flush=True)
    assert batch.problems == {"unkeyable_missing_column": 1}


def test_keyable_rows_and_table_wide_changes_count_no_problem() -> None:
    batch = Batch()
    add(batch, event(1, 2, 5))
    add(
        batch,
        b'{"v":2,"t":"public.products","op":"U","ts":7,"c":["id","category_id"],'
        b'"r":[["-9223372036854775808",null],["a b:{c}","9223372036854775807"]]}',
    )
    add(batch, b'{"v":2,"t":"public.products","op":"T","ts":1,"all":true}')
    add(batch, b'{"v":2,"t":"public.orders","op":"I","ts":1,"c":["id"],"r":[["x"]]}')
    assert batch.flush and not batch.problems
