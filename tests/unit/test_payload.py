"""Parsing trigger payloads: well-formed ones become exact changes, anything else widens."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from invalidator.payload import parse
from invalidator.rules import targets_for


def payload(**fields: object) -> bytes:
    body: dict[str, object] = {"v": 1, "t": "products", "op": "U", "ts": 1_700_000_000_000_000}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def test_row_payload_becomes_a_change_with_named_columns() -> None:
    parsed = parse(payload(c=["id", "category_id"], r=[[5, 2], [5, 3]]))
    assert parsed.problem is None
    change = parsed.change
    assert (change.table, change.op, change.table_wide) == ("products", "UPDATE", False)
    assert change.rows == ({"id": 5, "category_id": 2}, {"id": 5, "category_id": 3})
    assert change.ts_us == 1_700_000_000_000_000
    assert not change.in_place  # no "p": the rows changed key columns (it moved)
    assert targets_for(change).tags >= {"category:2:pages", "category:3:pages"}


def test_in_place_flag_is_read_for_updates_only() -> None:
    update = parse(payload(c=["id", "category_id"], r=[[5, 2]], p=True)).change
    assert update.in_place
    assert targets_for(update).tags == {"row:products:5", "category:2:summary"}
    delete = parse(payload(op="D", c=["id", "category_id"], r=[[5, 2]], p=True)).change
    assert not delete.in_place
    assert "category:2:pages" in targets_for(delete).tags


def test_text_payload_as_psycopg_delivers_it_is_accepted() -> None:
    parsed = parse(payload(op="D", c=["id"], r=[[4]], t="categories").decode())
    assert parsed.change.op == "DELETE" and parsed.change.rows == ({"id": 4},)


@pytest.mark.parametrize("op", ["T", "U"])
def test_table_wide_payload_is_a_table_wide_change(op: str) -> None:
    parsed = parse(payload(op=op, all=True))
    assert parsed.problem is None
    assert parsed.change.table_wide and parsed.change.table == "products"
    assert targets_for(parsed.change).flush


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not json at all", "not_json"),
        (b"", "not_json"),
        (b'{"v":1,"t":"products","op":"U","c":["id","category_id"],"r":[[1,2]', "not_json"),
        (b"[1,2,3]", "not_an_object"),
        (b'{"v":1,"op":"U"}', "no_table"),
        (b'{"v":1,"t":42}', "no_table"),
        (payload(v=2, c=["id"], r=[[1]]), "unknown_version"),
        (payload(v=None), "unknown_version"),
        (payload(op="X", c=["id"], r=[[1]]), "bad_op"),
        (payload(op=["U"], c=["id"], r=[[1]]), "bad_op"),
        (payload(c=["id", "category_id"], r=[[1]]), "bad_rows"),
        (payload(c=["id", "category_id"], r="1,2"), "bad_rows"),
        (payload(c=[], r=[]), "bad_rows"),
        (payload(c=None, r=[[1, 2]]), "bad_rows"),
    ],
)
def test_malformed_payload_widens_to_a_flush_and_is_labelled(raw: bytes, problem: str) -> None:
    parsed = parse(raw)
    assert parsed.problem == problem
    assert parsed.change.table_wide
    assert targets_for(parsed.change).flush  # never silently dropped


def test_non_integer_timestamp_is_ignored_not_fatal() -> None:
    parsed = parse(payload(ts="soon", c=["id"], r=[[1]], t="categories"))
    assert parsed.problem is None and parsed.change.ts_us is None


@given(st.binary(max_size=200))
def test_any_bytes_parse_to_something_that_invalidates(raw: bytes) -> None:
    parsed = parse(raw)
    assert targets_for(parsed.change)  # never empty: either the rows' keys or a flush


@given(st.lists(st.tuples(st.integers(1, 2**62), st.integers(1, 2**62)), min_size=1, max_size=50))
def test_round_trip_of_product_rows_is_exact(rows: list[tuple[int, int]]) -> None:
    parsed = parse(payload(c=["id", "category_id"], r=[list(r) for r in rows]))
    targets = targets_for(parsed.change)
    assert not targets.flush
    assert targets.keys == {f"product:{i}" for i, _ in rows}
    assert targets.tags == (
        {f"row:products:{i}" for i, _ in rows}
        | {f"category:{c}:{what}" for _, c in rows for what in ("pages", "summary")}
    )
