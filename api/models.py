"""Request and response bodies (pydantic): validated at the edge, so bad input is a 422.

The bounds are the ones the database accepts *and* a JSON client can state exactly: every
integer bound is at most 2**53 - 1, the largest integer a double (what many JSON parsers and
schema validators use for numbers) holds exactly. A bound of 2**63 - 1 is written
9.223372036854776e18 in the OpenAPI document and reads as 2**63, so a client would believe
2**63 valid and be refused. Ids come from Postgres identities starting at 1: far below it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

MAX_JSON_INT = 2**53 - 1  # exact in a double: Number.MAX_SAFE_INTEGER
MAX_ID = MAX_JSON_INT
MAX_INT = 2**31 - 1  # products.stock is a Postgres integer
MAX_PAGE = 100
MAX_OFFSET = 100_000


def _integral(value: Any) -> Any:
    """JSON Schema's "integer" is any number without a fraction: 5.0 is one. Bodies are
    strict (no "5", no true), so only an integral float is turned into an int here."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_INTEGRAL = BeforeValidator(_integral)  # after the bounds: they stay in the schema
Id = Annotated[int, Field(ge=1, le=MAX_ID), _INTEGRAL]
# Postgres text cannot hold NUL; length() counts characters, as pydantic does
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
Cents = Annotated[int, Field(ge=0, le=MAX_JSON_INT), _INTEGRAL]
Stock = Annotated[int, Field(ge=0, le=MAX_INT), _INTEGRAL]


class ProductCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    category_id: Id
    name: Name
    price_cents: Cents
    stock: Stock = 0


def _patch_schema(schema: dict[str, Any]) -> None:
    """At least one field; no field has a default (a left-out field keeps the row's value)."""
    schema["minProperties"] = 1
    for field in schema.get("properties", {}).values():
        field.pop("default", None)


class ProductPatch(BaseModel):
    """Any subset of the writable fields, at least one; a field left out keeps its value.

    null is refused rather than read as "keep" (or "clear": every column is NOT NULL), and
    the schema says so: the fields are not nullable and the object has minProperties 1."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_patch_schema)

    category_id: Id | SkipJsonSchema[None] = None
    name: Name | SkipJsonSchema[None] = None
    price_cents: Cents | SkipJsonSchema[None] = None
    stock: Stock | SkipJsonSchema[None] = None

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null: leave the field out to keep its value")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> ProductPatch:
        if not self.model_fields_set:
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
    """Every error but 422: one sentence saying what is wrong."""

    detail: str


class Health(BaseModel):
    """GET /healthz: "ok" with 200, "unavailable" with 503, and the checks behind it."""

    model_config = ConfigDict(extra="allow")

    status: str
    mode: str
    database: str
    redis: str
