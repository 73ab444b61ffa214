"""A check of our own for the Schemathesis run (loaded with SCHEMATHESIS_HOOKS): an error
response never shows internals, whatever the schema allows in its `detail` sentence."""

from __future__ import annotations

from typing import Any

import schemathesis

TRACE_MARKERS = ("Traceback", 'File "/', "psycopg.", "redis.exceptions", "asyncpg", "sqlalchemy")


@schemathesis.check
def no_internals_in_error_bodies(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 400:
        return None
    text = response.content.decode("utf-8", "replace")
    shown = [marker for marker in TRACE_MARKERS if marker in text]
    if shown:
        raise AssertionError(f"the error body shows internals ({', '.join(shown)}): {text[:300]}")
    return None
