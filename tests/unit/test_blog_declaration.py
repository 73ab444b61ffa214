"""The blog's declaration (examples/blog/pgbust.toml), read by pgbust's own parser and
rules: keys of text, uuid and a composite key name exactly the entries and tags it says."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from examples.blog.loaders import LOADERS
from pgbust import UnknownEntry, declaration
from pgbust.protocol import Targets
from pgbust.rules import targets_for, write_change

BLOG = Path(__file__).resolve().parents[2] / "examples" / "blog" / "pgbust.toml"
DECL = declaration.load(BLOG)
ALICE = uuid.UUID("7d9f3c4e-1b2a-4c5d-8e6f-0a1b2c3d4e5f")
BOB = uuid.UUID("00000000-0000-4000-8000-000000000002")
SLUG = "hello: {world} ünï"  # ':', '{', '}', spaces and unicode: all escaped but unicode
SLUG_NAME = "hello%3A%20%7Bworld%7D%20ünï"


def targets(table: str, op: str, **kwargs: object) -> Targets:
    return targets_for(DECL, write_change(table, op, **kwargs))  # type: ignore[arg-type]


def test_every_declared_entry_has_a_loader_and_every_loader_is_declared() -> None:
    assert set(LOADERS.templates) == set(DECL.entries)


def test_the_migrations_folder_is_next_to_the_file() -> None:
    assert DECL.migrations == (BLOG.parent / "migrations",)
    assert [p.name for p in DECL.migrations[0].glob("*.sql")] == ["0001_blog.sql"]


def test_names_render_a_uuid_in_its_postgres_text_form_and_escape_a_slug() -> None:
    assert DECL.render("author:{id}", {"id": ALICE}) == f"author:{ALICE}"
    assert DECL.render("post:{slug}", {"slug": SLUG}) == f"post:{SLUG_NAME}"
    assert (
        DECL.render("comment:{post_slug}:{number}", {"post_slug": SLUG, "number": 7})
        == f"comment:{SLUG_NAME}:7"
    )


def test_a_comments_list_is_filed_under_its_post_and_the_row_tags_of_its_comments() -> None:
    entry, tags = DECL.resolve(f"post:{SLUG_NAME}:comments")
    assert tags == (f"post:{SLUG_NAME}:comments",)
    rows = [{"post_slug": SLUG, "number": 1}, {"post_slug": SLUG, "number": 12}]
    assert entry.row_tags(rows) == (
        f"row:comment:{SLUG_NAME}:1",
        f"row:comment:{SLUG_NAME}:12",
    )


def test_editing_a_comment_in_place_kills_it_and_the_list_that_shows_it_only() -> None:
    row = {"post_slug": SLUG, "number": 3}
    assert targets("blog.comments", "update", old=row, new=row, changed=["body"]) == Targets(
        keys=frozenset({f"comment:{SLUG_NAME}:3"}),
        tags=frozenset({f"row:comment:{SLUG_NAME}:3"}),
    )


def test_a_new_comment_changes_which_comments_its_post_lists() -> None:
    assert targets("blog.comments", "insert", new={"post_slug": SLUG, "number": 4}) == Targets(
        keys=frozenset({f"comment:{SLUG_NAME}:4"}),
        tags=frozenset({f"row:comment:{SLUG_NAME}:4", f"post:{SLUG_NAME}:comments"}),
    )


def test_a_comment_moved_to_another_post_leaves_one_list_and_joins_the_other() -> None:
    old, new = {"post_slug": SLUG, "number": 1}, {"post_slug": "other", "number": 9}
    assert targets("blog.comments", "update", old=old, new=new, changed=["body"]) == Targets(
        keys=frozenset({f"comment:{SLUG_NAME}:1", "comment:other:9"}),
        tags=frozenset(
            {
                f"row:comment:{SLUG_NAME}:1",
                "row:comment:other:9",
                f"post:{SLUG_NAME}:comments",
                "post:other:comments",
            }
        ),
    )


def test_editing_a_post_kills_the_post_not_its_comments_nor_its_authors_count() -> None:
    row = {"slug": SLUG, "author_id": ALICE}
    assert targets("blog.posts", "update", old=row, new=row, changed=["title"]) == Targets(
        keys=frozenset({f"post:{SLUG_NAME}"})
    )


def test_a_post_that_changes_author_kills_both_authors_counts() -> None:
    old, new = {"slug": SLUG, "author_id": ALICE}, {"slug": SLUG, "author_id": BOB}
    assert targets("blog.posts", "update", old=old, new=new, changed=[]) == Targets(
        keys=frozenset({f"post:{SLUG_NAME}"}),
        tags=frozenset({f"author:{ALICE}:posts", f"author:{BOB}:posts"}),
    )


def test_a_renamed_post_is_a_delete_and_an_insert() -> None:
    old, new = {"slug": SLUG, "author_id": ALICE}, {"slug": "renamed", "author_id": ALICE}
    assert targets("blog.posts", "update", old=old, new=new, changed=[]) == Targets(
        keys=frozenset({f"post:{SLUG_NAME}", "post:renamed"}),
        tags=frozenset(
            {f"author:{ALICE}:posts", f"post:{SLUG_NAME}:comments", "post:renamed:comments"}
        ),
    )


def test_renaming_an_author_kills_the_author_only() -> None:
    row = {"id": ALICE}
    assert targets("blog.authors", "update", old=row, new=row, changed=["name"]) == Targets(
        keys=frozenset({f"author:{ALICE}"})
    )


@pytest.mark.parametrize(
    "name",
    ["author:not-a-uuid", "comment:slug:0", "comment:slug:-1", "comment:slug:99999999999"],
)
async def test_a_value_no_row_can_have_names_no_entry(name: str) -> None:
    with pytest.raises(UnknownEntry):
        await LOADERS.load(None, name)
