"""Request and response bodies (pydantic): validated at the edge, so bad input is a 422."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_BIGINT = 2**63 - 1
MAX_INT = 2**31 - 1
MAX_PAGE = 100
MAX_OFFSET = 100_000

Id = Annotated[int, Field(ge=1, le=MAX_BIGINT)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Cents = Annotated[int, Field(ge=0, le=MAX_BIGINT)]
Stock = Annotated[int, Field(ge=0, le=MAX_INT)]


class ProductCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    category_id: Id
    name: Name
    price_cents: Cents
    stock: Stock = 0


class ProductPatch(BaseModel):
    """Any subset of the writable fields; at least one."""

    model_config = ConfigDict(extra="forbid", strict=True)

    category_id: Id | None = None
    name: Name | None = None
    price_cents: Cents | None = None
    stock: Stock | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ProductPatch:
        if not self.model_fields_set or all(
            getattr(self, name) is None for name in self.model_fields_set
        ):
            raise ValueError("give at least one of category_id, name, price_cents, stock")
        return self


class Product(BaseModel):
    """A product as served (documentation of the bytes the loaders produce)."""

    id: int
    category_id: int
    name: str
    price_cents: int
    stock: int
    version: int
    updated_at: datetime


class CategoryPage(BaseModel):
    category_id: int
    limit: int
    offset: int
    items: list[Product]


class CategorySummary(BaseModel):
    category_id: int
    count: int
    total_stock: int
    min_price_cents: int | None
    avg_price_cents: float | None
    max_price_cents: int | None


class Problem(BaseModel):
    detail: str
