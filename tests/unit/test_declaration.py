"""The declaration file: what it accepts, and how it refuses a mistake (file, line, reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgbust.declaration import DeclarationError, load, parse

GOOD = """\
[tables."public.products"]
key = ["id"]
depends = ["category_id"]
entries = ["product:{id}"]
tags = ["category:{category_id}"]

[tables."public.categories"]
key = ["id"]
tags = ["category:{id}"]
"""


def test_the_contract_shape_parses() -> None:
    declaration = parse(GOOD, "pgbust.toml")
    products = declaration.tables["public.products"]
    assert products.key == ("id",) and products.depends == ("category_id",)
    assert [r.template.text for r in products.rules] == ["product:{id}", "category:{category_id}"]
    assert declaration.table("products") is products  # bare names resolve when unambiguous


def test_the_repository_declaration_is_valid() -> None:
    declaration = load(Path(__file__).parents[2] / "pgbust.toml")
    assert "public.products" in declaration.tables
    assert declaration.loaders == "api.loaders:LOADERS"


def test_inline_rules_say_when_and_for_which_columns() -> None:
    text = GOOD.replace(
        'tags = ["category:{category_id}"]',
        'tags = [{ tag = "category:{category_id}", when = ["insert", "delete"], columns = ["x"] }]',
    )
    rule = parse(text).tables["public.products"].rules[1]
    assert rule.when == frozenset({"insert", "delete"})
    assert rule.columns == frozenset({"x"})


@pytest.mark.parametrize(
    ("replace", "by", "line", "reason"),
    [
        ('entries = ["product:{id}"]', 'entries = ["product:{idd}"]', 4, "not a key or depends"),
        ('key = ["id"]\ndepends', "key = []\ndepends", 2, "non-empty list"),
        ('depends = ["category_id"]', 'depends = ["id"]', 3, "already a key column"),
        ('entries = ["product:{id}"]', 'entries = ["product::{id}"]', 4, "empty segment"),
        ('entries = ["product:{id}"]', 'entrys = ["product:{id}"]', 4, "unknown key"),
        ('[tables."public.categories"]', '[tables."categories"]', 7, '"schema.table"'),
        ('tags = ["category:{id}"]', "tags = []", 7, "invalidate nothing"),
        (
            'tags = ["category:{id}"]',
            'tags = [{ tag = "c:{id}", when = ["merge"] }]',
            9,
            "when must",
        ),
        ('tags = ["category:{id}"]', 'tags = ["category:{id}"', 9, "not valid TOML"),
    ],
)
def test_a_mistake_names_the_file_the_line_and_the_reason(
    replace: str, by: str, line: int, reason: str
) -> None:
    text = GOOD.replace(replace, by, 1)
    assert text != GOOD
    with pytest.raises(DeclarationError) as failure:
        parse(text, "conf/pgbust.toml")
    message = str(failure.value)
    assert message.startswith(f"conf/pgbust.toml:{line}: "), message
    assert reason in message


def test_an_entry_filed_under_a_tag_no_table_bumps_is_refused() -> None:
    text = GOOD + '\n[entries."category:{id}:summary"]\ntags = ["category:{id}:sumary"]\n'
    with pytest.raises(DeclarationError, match=r":12: .*no table rule bumps a tag like"):
        parse(text)


def test_an_entry_nothing_invalidates_is_refused() -> None:
    with pytest.raises(DeclarationError, match="would never be invalidated"):
        parse(GOOD + '\n[entries."order:{id}"]\n')


def test_overlapping_entries_are_refused() -> None:
    text = GOOD + (
        '\n[entries."category:{id}:summary"]\ntags = ["category:{id}"]\n'
        '[entries."category:{id}:{what}"]\ntags = ["category:{id}"]\n'
    )
    with pytest.raises(DeclarationError, match="overlaps the entry"):
        parse(text)


def test_a_missing_file_says_which_setting_names_it(tmp_path: Path) -> None:
    with pytest.raises(DeclarationError, match="PGBUST_CONFIG"):
        load(tmp_path / "nowhere.toml")


def test_migration_folders_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "app" / "pgbust.toml"
    path.parent.mkdir()
    path.write_text('[pgbust]\nmigrations = "sql"\n' + GOOD)
    assert load(path).migrations == ((tmp_path / "app" / "sql").resolve(),)


def test_on_a_cluster_an_entry_lives_with_its_first_tag_or_alone() -> None:
    """Declaration.home_of: the hash tag of an entry's keys (keys.ClusterNames); the API reads
    with tags[0] of Declaration.resolve, so both must agree."""
    declaration = load(Path(__file__).parents[2] / "pgbust.toml")
    assert declaration.home_of("category:3:summary") == "category:3:summary"  # its tag's name
    page = "category:3:products:20:0"
    assert declaration.home_of(page) == declaration.resolve(page)[1][0] == "category:3:pages"
    assert declaration.home_of("product:7") == "product:7"  # untagged
    assert declaration.home_of("nothing:declared") == "nothing:declared"
