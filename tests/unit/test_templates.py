"""Key templates render any value unambiguously and parse back (pgbust/templates.py)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbust.templates import Template, TemplateError, escape, text_of, unescape

values = st.text(min_size=0, max_size=40)


@given(values)
def test_escape_round_trips_any_text(value: str) -> None:
    assert unescape(escape(value)) == value


@given(values)
def test_an_escaped_value_holds_no_separator_brace_space_or_control(value: str) -> None:
    rendered = escape(value)
    assert not set(rendered) & set(":{} \t\r\n")
    assert all(ord(c) >= 0x20 and ord(c) != 0x7F for c in rendered)


@given(values, values, values, values)
def test_composite_keys_never_collide(a: str, b: str, c: str, d: str) -> None:
    template = Template.parse("comment:{post}:{number}")
    first = template.render({"post": a, "number": b})
    second = template.render({"post": c, "number": d})
    assert (first == second) == ((a, b) == (c, d))


@given(values, values)
def test_a_rendered_name_parses_back_to_its_values(a: str, b: str) -> None:
    template = Template.parse("comment:{post}:n{number}x")
    assert template.match(template.render({"post": a, "number": b})) == {"post": a, "number": b}


def test_values_with_separators_braces_spaces_and_unicode_render_escaped() -> None:
    template = Template.parse("post:{slug}")
    assert template.render({"slug": "a:b {c}%"}) == "post:a%3Ab%20%7Bc%7D%25"
    assert template.render({"slug": "crème brûlée"}) == "post:crème%20brûlée"
    assert template.render({"slug": "-5"}) == "post:-5"


def test_python_values_render_in_their_postgres_text_form() -> None:
    template = Template.parse("row:{k}")
    u = uuid.UUID("0b0e6a2e-5b43-4b0b-9a0e-2b1f1c7d9e01")
    assert template.render_row({"k": u}) == f"row:{u}"
    assert template.render_row({"k": -42}) == "row:-42"
    assert template.render_row({"k": True}) == "row:true"
    assert template.render_row({"k": Decimal("1.50")}) == "row:1.50"
    assert text_of("x") == "x"


@pytest.mark.parametrize("value", [1.5, None, b"x", object()])
def test_values_without_a_stable_text_form_are_refused(value: object) -> None:
    with pytest.raises(TypeError, match="cannot render"):
        text_of(value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "non-empty"),
        ("a::b", "empty segment"),
        ("a:{x}{y}", "one placeholder per"),
        ("a:{x}-{y}", "one placeholder per"),
        ("a:{x", "unbalanced"),
        ("a:x}", "unbalanced"),
        ("a:{1x}", "not a column name"),
        ("a:{x}:{x}", "twice"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(TemplateError, match=reason):
        Template.parse(text)


def test_names_of_other_templates_do_not_match() -> None:
    template = Template.parse("category:{id}:summary")
    assert template.match("category:3:summary") == {"id": "3"}
    assert template.match("category:3:products:20:0") is None
    assert template.match("product:3") is None


def test_overlapping_templates_are_detected() -> None:
    assert Template.parse("category:{id}:summary").overlaps(Template.parse("category:{a}:{b}"))
    assert Template.parse("v{n}").overlaps(Template.parse("v1"))
    assert not Template.parse("category:{id}").overlaps(Template.parse("product:{id}"))
    assert not Template.parse("a:{x}").overlaps(Template.parse("a:{x}:b"))
