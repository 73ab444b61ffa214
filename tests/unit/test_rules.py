from invalidator.rules import Change, product_write_targets, targets_for
from pgbust.protocol import Targets


def test_product_update_invalidates_its_entry_and_its_category() -> None:
    change = Change("products", "UPDATE", rows=({"id": 5, "category_id": 2},))
    assert targets_for(change) == Targets(frozenset({"product:5"}), frozenset({"category:2"}))


def test_product_moving_category_invalidates_old_and_new_category() -> None:
    change = Change(
        "products", "UPDATE", rows=({"id": 5, "category_id": 2}, {"id": 5, "category_id": 3})
    )
    assert targets_for(change).tags == {"category:2", "category:3"}
    assert product_write_targets(5, 2, 3) == targets_for(change)


def test_category_change_invalidates_the_category_tag() -> None:
    change = Change("categories", "UPDATE", rows=({"id": 4},))
    assert targets_for(change) == Targets(tags=frozenset({"category:4"}))


def test_table_wide_change_flushes_everything() -> None:
    assert targets_for(Change("products", "TRUNCATE", table_wide=True)).flush


def test_unknown_table_flushes_everything_rather_than_dropping() -> None:
    assert targets_for(Change("orders", "INSERT", rows=({"id": 1},))).flush


def test_row_without_usable_key_flushes_everything() -> None:
    assert targets_for(Change("products", "UPDATE", rows=({"id": "x", "category_id": 1},))).flush
