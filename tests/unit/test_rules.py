"""The demo declaration's rules (pgbust.toml through pgbust.rules): what each kind of product
and category change invalidates. Both capture modes (NOTIFY, WAL) and the API's own writes
apply exactly these."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgbust import declaration
from pgbust.protocol import Targets
from pgbust.rules import Change, RowChange, targets_for, write_change

DEMO = declaration.load(Path(__file__).parents[2] / "pgbust.toml")


def _row(**values: int) -> dict[str, str | None]:
    return {column: str(value) for column, value in values.items()}


def _targets(table: str, *rows: RowChange) -> Targets:
    return targets_for(DEMO, Change(table, "X", rows=rows))


def _update(old: dict[str, str | None], new: dict[str, str | None], **kw: object) -> RowChange:
    return RowChange("U", old=old, new=new, **kw)  # type: ignore[arg-type]


P5 = _row(id=5, category_id=2)


@pytest.mark.parametrize("kind", ["I", "D"])
def test_product_insert_or_delete_changes_its_entry_its_pages_and_its_category(kind: str) -> None:
    row = RowChange("I", new=P5) if kind == "I" else RowChange("D", old=P5)
    assert _targets("public.products", row) == Targets(
        frozenset({"product:5"}),
        frozenset({"row:products:5", "category:2:pages", "category:2:summary"}),
    )


def test_product_update_in_place_of_a_watched_column_kills_entry_row_tag_and_summary() -> None:
    row = _update(P5, P5, changed=frozenset({"stock"}))
    assert _targets("public.products", row) == Targets(
        frozenset({"product:5"}), frozenset({"row:products:5", "category:2:summary"})
    )


def test_product_update_in_place_of_other_columns_leaves_the_summary_alone() -> None:
    row = _update(P5, P5, changed=frozenset())
    assert _targets("public.products", row) == Targets(
        frozenset({"product:5"}), frozenset({"row:products:5"})
    )


def test_product_update_in_place_with_unknown_columns_counts_every_column() -> None:
    assert _targets("public.products", _update(P5, P5)) == Targets(
        frozenset({"product:5"}), frozenset({"row:products:5", "category:2:summary"})
    )


def test_product_moving_category_invalidates_old_and_new_category_pages_and_summary() -> None:
    row = _update(P5, _row(id=5, category_id=3), changed=frozenset())
    assert _targets("public.products", row) == Targets(
        frozenset({"product:5"}),
        frozenset(
            {"row:products:5"}
            | {f"category:{c}:{what}" for c in (2, 3) for what in ("pages", "summary")}
        ),
    )


def test_product_re_keyed_is_a_delete_and_an_insert() -> None:
    row = _update(P5, _row(id=6, category_id=2), changed=frozenset())
    assert _targets("public.products", row) == Targets(
        frozenset({"product:5", "product:6"}),
        frozenset({"row:products:5", "row:products:6", "category:2:pages", "category:2:summary"}),
    )


def test_unpaired_update_rows_invalidate_every_rule_of_each() -> None:
    # an UPDATE that was not in place reaches NOTIFY's rules as unpaired OLD/NEW tuples
    rows = (RowChange("?", new=P5), RowChange("?", new=_row(id=5, category_id=3)))
    assert _targets("public.products", *rows) == _targets(
        "public.products", _update(P5, _row(id=5, category_id=3))
    )


def test_category_update_in_place_changes_nothing_cached() -> None:
    row = _update(_row(id=4), _row(id=4))
    assert _targets("public.categories", row) == Targets()


def test_category_that_comes_or_goes_kills_its_pages_and_summary() -> None:
    assert _targets("public.categories", RowChange("D", old=_row(id=4))) == Targets(
        tags=frozenset({"category:4:pages", "category:4:summary"})
    )


def test_table_wide_change_flushes_everything() -> None:
    assert targets_for(DEMO, Change("public.products", "TRUNCATE", table_wide=True)).flush


def test_unknown_table_flushes_everything_rather_than_dropping() -> None:
    row = RowChange("I", new={"id": "1"})
    assert targets_for(DEMO, Change("public.orders", "INSERT", rows=(row,))).flush


@pytest.mark.parametrize(
    "values",
    [{"id": None, "category_id": "1"}, {"category_id": "1"}, {"id": 5, "category_id": "1"}],
)
def test_row_without_usable_key_flushes_everything(values: dict[str, object]) -> None:
    row = RowChange("I", new=values)  # type: ignore[arg-type]
    assert targets_for(DEMO, Change("public.products", "INSERT", rows=(row,))).flush


def test_an_applications_own_write_is_the_change_the_capture_sees() -> None:
    write = write_change(
        "public.products",
        "update",
        old={"id": 5, "category_id": 2},
        new={"id": 5, "category_id": 3},
    )
    assert targets_for(DEMO, write) == _targets(
        "public.products", _update(P5, _row(id=5, category_id=3))
    )
