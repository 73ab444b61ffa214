"""The demo's entry and tag names, as its declaration (pgbust.toml) declares them (pure).

A page is filed under "category:<id>:pages" (what changes which products it lists: a product
inserted, deleted or moved) and under the *row tag* of every product it holds
("row:products:<id>", bumped by any change of that product), so an UPDATE in place kills the
pages that show the product and no other. A summary is filed under "category:<id>:summary".
tests/unit/test_rules.py holds these names and the declaration together.
"""

from __future__ import annotations


def product_entry(product_id: int) -> str:
    return f"product:{product_id}"


def category_page_entry(category_id: int, limit: int, offset: int) -> str:
    return f"category:{category_id}:products:{limit}:{offset}"


def category_summary_entry(category_id: int) -> str:
    return f"category:{category_id}:summary"


def category_pages_tag(category_id: int) -> str:
    return f"category:{category_id}:pages"


def category_summary_tag(category_id: int) -> str:
    return f"category:{category_id}:summary"


def product_row_tag(product_id: int) -> str:
    return f"row:products:{product_id}"
