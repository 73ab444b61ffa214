"""The NOTIFY path's rules (invalidator/rules.py) and the declaration's (pgbust.toml, applied
to WAL changes) give the same targets for the demo's changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from invalidator.rules import Change, product_write_targets, targets_for
from pgbust import declaration
from pgbust import rules as declared
from pgbust.protocol import Targets

DEMO = declaration.load(Path(__file__).parents[2] / "pgbust.toml")


def _row(**values: int) -> dict[str, str]:
    return {column: str(value) for column, value in values.items()}


def test_product_update_in_place_kills_its_entry_its_pages_and_its_summary_only() -> None:
    change = Change("products", "UPDATE", rows=({"id": 5, "category_id": 2},), in_place=True)
    assert targets_for(change) == Targets(
        frozenset({"product:5"}), frozenset({"row:products:5", "category:2:summary"})
    )
    assert product_write_targets(5, 2, 2, op="UPDATE") == targets_for(change)


def test_product_update_not_known_to_be_in_place_kills_its_categorys_pages_too() -> None:
    # a trigger older than the "p" flag, or an UPDATE that changed a key column
    change = Change("products", "UPDATE", rows=({"id": 5, "category_id": 2},))
    assert "category:2:pages" in targets_for(change).tags


def test_product_moving_category_invalidates_old_and_new_category_pages() -> None:
    change = Change(
        "products", "UPDATE", rows=({"id": 5, "category_id": 2}, {"id": 5, "category_id": 3})
    )
    tags = targets_for(change).tags
    assert {"category:2:pages", "category:3:pages", "category:2:summary"} <= tags
    assert {"category:3:summary", "row:products:5"} <= tags
    assert product_write_targets(5, 2, 3, op="UPDATE") == targets_for(change)


@pytest.mark.parametrize("op", ["INSERT", "DELETE"])
def test_product_insert_or_delete_changes_which_products_its_pages_list(op: str) -> None:
    change = Change("products", op, rows=({"id": 5, "category_id": 2},))
    assert targets_for(change) == Targets(
        frozenset({"product:5"}),
        frozenset({"row:products:5", "category:2:pages", "category:2:summary"}),
    )
    assert product_write_targets(5, 2, op=op) == targets_for(change)


def test_category_update_in_place_changes_nothing_cached() -> None:
    change = Change("categories", "UPDATE", rows=({"id": 4},), in_place=True)
    assert not targets_for(change)


def test_category_that_comes_or_goes_kills_its_pages_and_summary() -> None:
    change = Change("categories", "DELETE", rows=({"id": 4},))
    assert targets_for(change) == Targets(
        tags=frozenset({"category:4:pages", "category:4:summary"})
    )


def test_table_wide_change_flushes_everything() -> None:
    assert targets_for(Change("products", "TRUNCATE", table_wide=True)).flush


def test_unknown_table_flushes_everything_rather_than_dropping() -> None:
    assert targets_for(Change("orders", "INSERT", rows=({"id": 1},))).flush


def test_row_without_usable_key_flushes_everything() -> None:
    assert targets_for(Change("products", "UPDATE", rows=({"id": "x", "category_id": 1},))).flush


# --- the declaration agrees (what WAL capture applies) -----------------------------------------


def _declared(kind: str, old: dict[str, str] | None, new: dict[str, str] | None) -> Targets:
    row = declared.RowChange(kind, old=old, new=new)  # type: ignore[arg-type]
    return declared.targets_for(DEMO, declared.Change("public.products", "X", rows=(row,)))


def test_declaration_update_in_place_matches_the_notify_rules() -> None:
    notify = targets_for(
        Change("products", "UPDATE", rows=({"id": 5, "category_id": 2},), in_place=True)
    )
    assert _declared("U", _row(id=5, category_id=2), _row(id=5, category_id=2)) == notify


def test_declaration_move_matches_the_notify_rules() -> None:
    notify = product_write_targets(5, 2, 3, op="UPDATE")
    assert _declared("U", _row(id=5, category_id=2), _row(id=5, category_id=3)) == notify


@pytest.mark.parametrize(("kind", "op"), [("I", "INSERT"), ("D", "DELETE")])
def test_declaration_insert_and_delete_match_the_notify_rules(kind: str, op: str) -> None:
    values = _row(id=5, category_id=2)
    old, new = (None, values) if kind == "I" else (values, None)
    assert _declared(kind, old, new) == product_write_targets(5, 2, op=op)


def test_declaration_update_of_a_key_column_is_a_delete_and_an_insert() -> None:
    targets = _declared("U", _row(id=5, category_id=2), _row(id=6, category_id=2))
    assert {"product:5", "product:6"} <= targets.keys
    assert {"row:products:5", "row:products:6", "category:2:pages"} <= targets.tags


def test_declaration_update_of_other_columns_leaves_the_summary_alone() -> None:
    row = declared.RowChange(
        "U", old=_row(id=5, category_id=2), new=_row(id=5, category_id=2), changed=frozenset()
    )
    change = declared.Change("public.products", "UPDATE", rows=(row,))
    assert declared.targets_for(DEMO, change) == Targets(
        frozenset({"product:5"}), frozenset({"row:products:5"})
    )
