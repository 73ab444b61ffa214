"""Rules from the declaration: what a change of a row invalidates (pgbust/rules.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgbust.declaration import load, parse
from pgbust.protocol import Targets
from pgbust.rules import Change, RowChange, explain, targets_for, write_change

DEMO = load(Path(__file__).parents[2] / "pgbust.toml")

BLOG = parse(
    """
[tables."public.authors"]
key = ["id"]
entries = ["author:{id}"]

[tables."blog.posts"]
key = ["slug"]
depends = ["author_id"]
entries = ["post:{slug}"]
tags = [{ tag = "author:{author_id}:posts", when = ["insert", "delete"] }]

[tables."blog.comments"]
key = ["post_slug", "number"]
entries = ["comment:{post_slug}:{number}"]
tags = ["post:{post_slug}:comments"]
"""
)


def _update(old: dict[str, str | None], new: dict[str, str | None], *changed: str) -> Change:
    return Change("public.products", "UPDATE", (RowChange("U", old, new, frozenset(changed)),))


def test_a_stock_update_kills_the_product_the_pages_that_show_it_and_its_summary() -> None:
    change = _update({"id": "5", "category_id": "2"}, {"id": "5", "category_id": "2"}, "stock")
    assert targets_for(DEMO, change) == Targets(
        frozenset({"product:5"}), frozenset({"row:products:5", "category:2:summary"})
    )


def test_a_rename_leaves_the_summary_and_the_other_pages_alone() -> None:
    change = _update({"id": "5", "category_id": "2"}, {"id": "5", "category_id": "2"})
    assert targets_for(DEMO, change).tags == {"row:products:5"}


def test_a_product_moving_category_invalidates_the_old_and_the_new_one() -> None:
    change = _update({"id": "5", "category_id": "2"}, {"id": "5", "category_id": "3"})
    assert targets_for(DEMO, change).tags == {
        "row:products:5",
        "category:2:pages",
        "category:2:summary",
        "category:3:pages",
        "category:3:summary",
    }


def test_a_renamed_category_invalidates_nothing_a_deleted_one_its_pages_and_summary() -> None:
    rename = Change("public.categories", "UPDATE", (RowChange("U", {"id": "4"}, {"id": "4"}),))
    assert not targets_for(DEMO, rename)
    delete = Change("public.categories", "DELETE", (RowChange("D", old={"id": "4"}),))
    assert targets_for(DEMO, delete).tags == {"category:4:pages", "category:4:summary"}


def test_an_unknown_change_of_columns_counts_as_a_change_of_all_of_them() -> None:
    row = RowChange("U", {"id": "5", "category_id": "2"}, {"id": "5", "category_id": "2"}, None)
    change = Change("public.products", "UPDATE", (row,))
    assert "category:2:summary" in targets_for(DEMO, change).tags


def test_text_uuid_and_composite_keys_render_escaped() -> None:
    comment = Change(
        "blog.comments",
        "INSERT",
        (RowChange("I", new={"post_slug": "a:b c", "number": "3"}),),
    )
    assert targets_for(BLOG, comment) == Targets(
        frozenset({"comment:a%3Ab%20c:3"}), frozenset({"post:a%3Ab%20c:comments"})
    )
    author = "0b0e6a2e-5b43-4b0b-9a0e-2b1f1c7d9e01"
    post = Change(
        "blog.posts", "INSERT", (RowChange("I", new={"slug": "hello", "author_id": author}),)
    )
    assert targets_for(BLOG, post).tags == {f"author:{author}:posts"}


def test_an_update_that_keeps_the_author_leaves_the_post_count_alone() -> None:
    row = {"slug": "hello", "author_id": "a1"}
    change = Change("blog.posts", "UPDATE", (RowChange("U", row, row),))
    assert targets_for(BLOG, change) == Targets(frozenset({"post:hello"}))


def test_a_null_dependency_names_no_dependency() -> None:
    change = Change("blog.posts", "DELETE", (RowChange("D", old={"slug": "x", "author_id": None}),))
    assert targets_for(BLOG, change) == Targets(frozenset({"post:x"}))


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"category_id": "2"}, "unkeyable_missing_column"),
        ({"id": None, "category_id": "2"}, "unkeyable_null"),
        ({"id": 5, "category_id": "2"}, "unkeyable_not_text"),
        ({"id": "5"}, "unkeyable_missing_column"),
    ],
)
def test_a_row_that_cannot_be_keyed_invalidates_everything_and_says_why(
    values: dict[str, object], reason: str
) -> None:
    change = Change("public.products", "DELETE", (RowChange("D", old=values),))  # type: ignore[arg-type]
    assert explain(DEMO, change) == (Targets(flush=True), reason)


def test_undeclared_tables_and_table_wide_changes_invalidate_everything() -> None:
    assert targets_for(DEMO, Change("public.orders", "INSERT", ())).flush
    assert targets_for(DEMO, Change("public.products", "TRUNCATE", table_wide=True)).flush


def test_an_applications_own_write_gets_the_same_targets_as_its_capture() -> None:
    own = write_change(
        "public.products",
        "update",
        old={"id": 5, "category_id": 2},
        new={"id": 5, "category_id": 3},
        changed=["category_id"],
    )
    captured = _update({"id": "5", "category_id": "2"}, {"id": "5", "category_id": "3"})
    assert targets_for(DEMO, own) == targets_for(DEMO, captured)
