"""Demo data, generated inside Postgres (INSERT ... SELECT generate_series): 100k rows in ~1 s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from db.queries import query
from pgbust.errors import PgbustError


@dataclass(frozen=True)
class Counts:
    categories: int
    products: int


class CatalogueNotEmpty(PgbustError):
    def __init__(self, counts: Counts) -> None:
        super().__init__(
            f"the catalogue already holds {counts.products} products and "
            f"{counts.categories} categories; pass --replace to wipe and re-seed"
        )
        self.counts = counts


def count(conn: psycopg.Connection[Any]) -> Counts:
    row = conn.execute(query("count_catalogue")).fetchone()
    assert row is not None
    return Counts(categories=row[0], products=row[1])


def seed(database_url: str, products: int, categories: int, replace: bool = False) -> Counts:
    if categories < 1 or products < 0:
        raise ValueError("need at least one category and a non-negative number of products")
    with psycopg.connect(database_url) as conn:
        existing = count(conn)
        if (existing.products or existing.categories) and not replace:
            raise CatalogueNotEmpty(existing)
        conn.execute(query("seed_reset"))
        conn.execute(query("seed_categories"), {"categories": categories})
        conn.execute(query("seed_products"), {"products": products, "categories": categories})
        conn.commit()
        return count(conn)
