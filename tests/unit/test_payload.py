"""Parsing trigger payloads (v2): well-formed ones become exact changes, anything else — a v1
payload of an old trigger included — widens to a flush, labelled."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from invalidator.payload import parse
from pgbust import declaration
from pgbust.protocol import Targets
from pgbust.rules import Change, RowChange, targets_for

DEMO = declaration.load(Path(__file__).parents[2] / "pgbust.toml")
COLUMNS = ["id", "category_id"]


def payload(**fields: object) -> bytes:
    body: dict[str, object] = {
        "v": 2,
        "t": "public.products",
        "op": "U",
        "ts": 1_700_000_000_000_000,
    }
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def targets(change: Change) -> Targets:
    return targets_for(DEMO, change)


def test_insert_rows_are_new_rows_with_named_text_columns() -> None:
    parsed = parse(payload(op="I", c=COLUMNS, r=[["5", "2"], ["6", None]]))
    assert parsed.problem is None
    change = parsed.change
    assert (change.table, change.op, change.table_wide) == ("public.products", "INSERT", False)
    assert change.rows == (
        RowChange("I", new={"id": "5", "category_id": "2"}),
        RowChange("I", new={"id": "6", "category_id": None}),
    )
    assert change.ts_us == 1_700_000_000_000_000


def test_delete_rows_are_old_rows() -> None:
    change = parse(payload(op="D", c=COLUMNS, r=[["5", "2"]])).change
    assert change.rows == (RowChange("D", old={"id": "5", "category_id": "2"}),)


def test_update_in_place_pairs_each_row_with_itself_and_reads_the_watched_columns() -> None:
    change = parse(payload(c=COLUMNS, r=[["5", "2"]], p=True, w=["stock"])).change
    values = {"id": "5", "category_id": "2"}
    assert change.rows == (RowChange("U", old=values, new=values, changed=frozenset({"stock"})),)
    assert targets(change).tags == {"row:products:5", "category:2:summary"}


def test_update_in_place_without_a_watched_column_changed_leaves_the_summary_alone() -> None:
    change = parse(payload(c=COLUMNS, r=[["5", "2"]], p=True, w=[])).change
    assert targets(change) == Targets(frozenset({"product:5"}), frozenset({"row:products:5"}))


@pytest.mark.parametrize("w", [None, "stock", [1]])
def test_update_in_place_without_readable_watched_columns_counts_every_column(w: object) -> None:
    change = parse(payload(c=COLUMNS, r=[["5", "2"]], p=True, w=w)).change
    assert change.rows[0].changed is None
    assert "category:2:summary" in targets(change).tags


def test_update_not_in_place_is_unpaired_tuples_that_invalidate_every_rule() -> None:
    parsed = parse(payload(c=COLUMNS, r=[["5", "2"], ["5", "3"]]))
    assert [row.kind for row in parsed.change.rows] == ["?", "?"]
    assert targets(parsed.change).tags == {"row:products:5"} | {
        f"category:{c}:{what}" for c in (2, 3) for what in ("pages", "summary")
    }


def test_in_place_flag_is_read_for_updates_only() -> None:
    delete = parse(payload(op="D", c=COLUMNS, r=[["5", "2"]], p=True)).change
    assert delete.rows[0].kind == "D"
    assert "category:2:pages" in targets(delete).tags


def test_text_payload_as_psycopg_delivers_it_is_accepted() -> None:
    parsed = parse(payload(op="D", c=["id"], r=[["4"]], t="public.categories").decode())
    assert parsed.change.op == "DELETE" and parsed.change.rows == (RowChange("D", old={"id": "4"}),)


@pytest.mark.parametrize("op", ["T", "U", "S"])
def test_table_wide_payload_is_a_table_wide_change(op: str) -> None:
    parsed = parse(payload(op=op, all=True, why="alter table"))
    assert parsed.problem is None
    assert parsed.change.table_wide and parsed.change.table == "public.products"
    assert parsed.why == "alter table"
    assert targets(parsed.change).flush


def test_v1_payload_of_an_old_trigger_flushes_its_table_labelled_old_version() -> None:
    raw = b'{"v":1,"t":"products","op":"U","ts":7,"c":["id","category_id"],"r":[[1,2]]}'
    parsed = parse(raw)
    assert parsed.problem == "old_version"
    assert parsed.change.table == "products" and parsed.change.table_wide
    assert targets(parsed.change).flush


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not json at all", "not_json"),
        (b"", "not_json"),
        (b'{"v":2,"t":"public.products","op":"U","c":["id"],"r":[["1"]', "not_json"),
        (b"[1,2,3]", "not_an_object"),
        (b'{"v":2,"op":"U"}', "no_table"),
        (b'{"v":2,"t":42}', "no_table"),
        (payload(v=3, c=["id"], r=[["1"]]), "unknown_version"),
        (payload(v=True, c=["id"], r=[["1"]]), "unknown_version"),
        (payload(v="2", c=["id"], r=[["1"]]), "unknown_version"),
        (payload(v=None), "unknown_version"),
        (payload(op="X", c=["id"], r=[["1"]]), "bad_op"),
        (payload(op=["U"], c=["id"], r=[["1"]]), "bad_op"),
        (payload(op="T", c=["id"], r=[["1"]]), "bad_rows"),
        (payload(c=COLUMNS, r=[["1"]]), "bad_rows"),
        (payload(c=COLUMNS, r="1,2"), "bad_rows"),
        (payload(c=["id", "id"], r=[["1", "2"]]), "bad_rows"),
        (payload(c=[], r=[]), "bad_rows"),
        (payload(c=None, r=[["1", "2"]]), "bad_rows"),
    ],
)
def test_malformed_payload_widens_to_a_flush_and_is_labelled(raw: bytes, problem: str) -> None:
    parsed = parse(raw)
    assert parsed.problem == problem
    assert parsed.change.table_wide
    assert targets(parsed.change).flush  # never silently dropped


def test_a_value_that_is_not_text_flushes_as_unkeyable() -> None:
    change = parse(payload(op="I", c=COLUMNS, r=[[5, 2]])).change
    assert targets(change).flush


def test_non_integer_timestamp_is_ignored_not_fatal() -> None:
    parsed = parse(payload(ts="soon", op="D", c=["id"], r=[["1"]], t="public.categories"))
    assert parsed.problem is None and parsed.change.ts_us is None


@given(st.binary(max_size=200))
def test_any_bytes_parse_to_something_that_invalidates(raw: bytes) -> None:
    parsed = parse(raw)
    assert targets(parsed.change)  # never empty: either the rows' keys or a flush


@given(st.lists(st.tuples(st.integers(1, 2**62), st.integers(1, 2**62)), min_size=1, max_size=50))
def test_round_trip_of_product_rows_is_exact(rows: list[tuple[int, int]]) -> None:
    body = payload(op="I", c=COLUMNS, r=[[str(i), str(c)] for i, c in rows])
    found = targets(parse(body).change)
    assert not found.flush
    assert found.keys == {f"product:{i}" for i, _ in rows}
    assert found.tags == (
        {f"row:products:{i}" for i, _ in rows}
        | {f"category:{c}:{what}" for _, c in rows for what in ("pages", "summary")}
    )
