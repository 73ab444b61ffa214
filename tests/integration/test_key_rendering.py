"""Key rendering is identical in SQL and in Python (db/triggers/05_key_part.sql)."""

from __future__ import annotations

import orjson
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgbust.templates import Template

# Postgres text cannot hold NUL; everything else, surrogates aside, is fair game
texts = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(post=texts, number=texts)
def test_sql_and_python_render_the_same_name(
    pg: psycopg.Connection[tuple[object, ...]], post: str, number: str
) -> None:
    template = Template.parse("comment:{post}:n{number}")
    values = {"post": post, "number": number}
    row = pg.execute(
        "SELECT pgbust.render_key(%s, %s::jsonb)", (template.text, orjson.dumps(values).decode())
    ).fetchone()
    assert row is not None
    assert row[0] == template.render(values)


def test_a_missing_or_null_value_renders_no_name(
    pg: psycopg.Connection[tuple[object, ...]],
) -> None:
    row = pg.execute(
        "SELECT pgbust.render_key('post:{slug}', '{}'), "
        "pgbust.render_key('post:{slug}', '{\"slug\": null}')"
    ).fetchone()
    assert row == (None, None)
