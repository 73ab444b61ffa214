"""Parsing the trigger's NOTIFY payload into a Change (pure, no I/O).

The trigger (db/triggers/10_capture.sql) sends, as compact JSON:

    {"v":1,"t":"products","op":"U","ts":<µs>,"c":["id","category_id"],"r":[[1,2],[1,3]]}
    {"v":1,"t":"products","op":"U","ts":<µs>,"p":true,"c":[...],"r":[[1,2]]}  (in place)
    {"v":1,"t":"products","op":"T","ts":<µs>,"all":true}
    {"v":1,"t":"products","op":"S","ts":<µs>,"all":true,"why":"alter table"}  (DDL, capture)

Nothing is ever dropped: a payload that cannot be read in full becomes a table-wide change of
its table when the table is known, else a change of an unknown table (both flush everything
through the rules), and carries a `problem` label for the malformed-payload counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from invalidator.rules import Change

PAYLOAD_VERSION = 1
UNKNOWN_TABLE = "?"
# "S": rows may have changed without a row trigger (a DDL command, a capture (re)installed)
OPS = {"I": "INSERT", "U": "UPDATE", "D": "DELETE", "T": "TRUNCATE", "S": "DDL"}


@dataclass(frozen=True, slots=True)
class Parsed:
    change: Change
    problem: str | None = None  # reason label when the payload was malformed


def _wide(
    table: str, op: str, ts_us: int | None, problem: str | None, why: object = None
) -> Parsed:
    extra = {"why": why[:200]} if isinstance(why, str) and why else {}
    return Parsed(Change(table=table, op=op, table_wide=True, ts_us=ts_us, extra=extra), problem)


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
    if body.get("v") != PAYLOAD_VERSION:
        return _wide(table, op, ts_us, "unknown_version")
    if body.get("all") is True:
        return _wide(table, op, ts_us, None if op != "?" else "bad_op", body.get("why"))
    columns, rows = body.get("c"), body.get("r")
    if (
        op == "?"
        or not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, str) for c in columns)
        or not isinstance(rows, list)
        or not rows
    ):
        return _wide(table, op, ts_us, "bad_rows" if op != "?" else "bad_op")
    width = len(columns)
    parsed = []
    for row in rows:
        if not isinstance(row, list) or len(row) != width:
            return _wide(table, op, ts_us, "bad_rows")
        parsed.append(dict(zip(columns, row, strict=True)))
    in_place = op == "UPDATE" and body.get("p") is True
    return Parsed(Change(table=table, op=op, rows=tuple(parsed), ts_us=ts_us, in_place=in_place))
