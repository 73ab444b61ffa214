"""Parsing the trigger's NOTIFY payload into a pgbust.rules.Change (pure, no I/O).

The trigger (db/triggers/10_capture.sql, generated from the declaration file) sends payload
v2, as compact JSON:

    {"v":2,"t":"public.products","op":"I","ts":<µs>,"c":["id","category_id"],"r":[["1","2"]]}
    {"v":2,"t":"public.products","op":"U","ts":<µs>,"p":true,"w":["stock"],"c":[...],"r":[...]}
    {"v":2,"t":"public.products","op":"U","ts":<µs>,"c":[...],"r":[["1","2"],["1","3"]]}
    {"v":2,"t":"public.products","op":"T","ts":<µs>,"all":true}
    {"v":2,"t":"public.products","op":"S","ts":<µs>,"all":true,"why":"alter table"}  (DDL)

"t" is the declared table; "c" its key then depends columns; "r" their values as text (JSON
null for NULL). Each row becomes a RowChange: INSERT -> kind "I" (new), DELETE -> "D" (old),
an UPDATE in place ("p": the set of key + depends tuples is the same before and after) ->
"U" with old = new and `changed` = the watched columns "w" some row changed (no "w": unknown,
so every column counts), any other UPDATE -> "?" per tuple (OLD and NEW tuples unpaired: every
rule renders, which is wider but never misses).

Nothing is ever dropped: a payload that cannot be read in full becomes a table-wide change of
its table when the table is known, else a change of an unknown table (both flush everything
through the rules), and carries a `problem` label for the malformed-payload counter. Payload
v1 (triggers installed before the declaration drove NOTIFY capture, still there during an
upgrade) is read as a table-wide change of its table, labelled "old_version".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from pgbust.rules import Change, RowChange

PAYLOAD_VERSION = 2
OLD_VERSION = 1
UNKNOWN_TABLE = "?"
# "S": rows may have changed without a row trigger (a DDL command, a capture (re)installed)
OPS = {"I": "INSERT", "U": "UPDATE", "D": "DELETE", "T": "TRUNCATE", "S": "DDL"}
_ROW_OPS = {"INSERT", "UPDATE", "DELETE"}


@dataclass(frozen=True, slots=True)
class Parsed:
    change: Change
    problem: str | None = None  # reason label when the payload was malformed
    why: str | None = None  # what a table-wide event says happened (DDL, capture installed)


def _wide(
    table: str, op: str, ts_us: int | None, problem: str | None, why: object = None
) -> Parsed:
    said = why[:200] if isinstance(why, str) and why else None
    return Parsed(Change(table=table, op=op, table_wide=True, ts_us=ts_us), problem, said)


def _changed(body: dict[str, Any]) -> frozenset[str] | None:
    watched = body.get("w")
    if isinstance(watched, list) and all(isinstance(c, str) for c in watched):
        return frozenset(watched)
    return None  # not sent (no watched column) or unreadable: assume every column changed


def _row(op: str, in_place: bool, values: dict[str, Any], body: dict[str, Any]) -> RowChange:
    if op == "INSERT":
        return RowChange("I", new=values)
    if op == "DELETE":
        return RowChange("D", old=values)
    if in_place:
        return RowChange("U", old=values, new=values, changed=_changed(body))
    return RowChange("?", new=values)


def parse(raw: str | bytes) -> Parsed:
    """One NOTIFY payload -> a Change; malformed input widens the change instead of failing."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _wide(UNKNOWN_TABLE, "?", None, "not_json")
    if not isinstance(body, dict):
        return _wide(UNKNOWN_TABLE, "?", None, "not_an_object")
    table = body.get("t")
    if not isinstance(table, str) or not table:
        return _wide(UNKNOWN_TABLE, "?", None, "no_table")
    ts = body.get("ts")
    ts_us = ts if isinstance(ts, int) and not isinstance(ts, bool) else None
    op_code = body.get("op")
    op = OPS.get(op_code, "?") if isinstance(op_code, str) else "?"
    version = body.get("v")
    if version == OLD_VERSION and not isinstance(version, bool):
        return _wide(table, op, ts_us, "old_version", body.get("why"))
    if version != PAYLOAD_VERSION or isinstance(version, bool):
        return _wide(table, op, ts_us, "unknown_version")
    if body.get("all") is True:
        return _wide(table, op, ts_us, None if op != "?" else "bad_op", body.get("why"))
    if op not in _ROW_OPS:
        return _wide(table, op, ts_us, "bad_op" if op == "?" else "bad_rows")
    columns, rows = body.get("c"), body.get("r")
    if (
        not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, str) for c in columns)
        or len(set(columns)) != len(columns)
        or not isinstance(rows, list)
        or not rows
    ):
        return _wide(table, op, ts_us, "bad_rows")
    in_place = op == "UPDATE" and body.get("p") is True
    width = len(columns)
    parsed = []
    for row in rows:
        if not isinstance(row, list) or len(row) != width:
            return _wide(table, op, ts_us, "bad_rows")
        # a value that is not text (or null) is left for the rules to refuse (unkeyable)
        parsed.append(_row(op, in_place, dict(zip(columns, row, strict=True)), body))
    return Parsed(Change(table=table, op=op, rows=tuple(parsed), ts_us=ts_us))
