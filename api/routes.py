"""HTTP endpoints. Reads serve the cached bytes as they are (no re-serialisation)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import writes
from api.auth import check_bearer
from api.models import (
    MAX_BIGINT,
    MAX_OFFSET,
    MAX_PAGE,
    CategoryPage,
    CategorySummary,
    Problem,
    Product,
    ProductCreate,
    ProductPatch,
)
from api.runtime import Runtime
from pgbust.keys import category_page_entry, category_summary_entry, product_entry

router = APIRouter()
JSON = "application/json"

IdPath = Annotated[int, Path(ge=1, le=MAX_BIGINT)]
_X_CACHE = {"X-Cache": {"description": "L1, L2 or MISS", "schema": {"type": "string"}}}


def _doc(model: type[Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model, "headers": _X_CACHE}, 404: {"model": Problem}}


async def require_token(request: Request) -> None:
    """Runs before the body is validated: a bad token is a 401 whatever the body.

    async on purpose: FastAPI runs a sync dependency in a worker thread, a hop per write."""
    check_bearer(request, _runtime(request).token)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _serve(request: Request, entry: str, what: str) -> Response:
    runtime = _runtime(request)
    result = await runtime.cache.read(entry)
    runtime.sample_read(entry)
    headers = {"X-Cache": result.source}
    if result.payload is None:
        return JSONResponse({"detail": f"{what} not found"}, status.HTTP_404_NOT_FOUND, headers)
    return Response(result.payload, media_type=JSON, headers=headers)


# --- reads -----------------------------------------------------------------------------------


@router.get("/products/{product_id}", response_class=Response, responses=_doc(Product))
async def get_product(request: Request, product_id: IdPath) -> Response:
    return await _serve(request, product_entry(product_id), f"product {product_id}")


@router.get(
    "/categories/{category_id}/products", response_class=Response, responses=_doc(CategoryPage)
)
async def get_category_page(
    request: Request,
    category_id: IdPath,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    entry = category_page_entry(category_id, limit, offset)
    return await _serve(request, entry, f"category {category_id}")


@router.get(
    "/categories/{category_id}/summary", response_class=Response, responses=_doc(CategorySummary)
)
async def get_category_summary(request: Request, category_id: IdPath) -> Response:
    return await _serve(request, category_summary_entry(category_id), f"category {category_id}")


# --- writes ----------------------------------------------------------------------------------

_WRITE_DOC: dict[int | str, dict[str, Any]] = {401: {"model": Problem}, 404: {"model": Problem}}
_AUTH = [Depends(require_token)]


@router.post(
    "/products",
    status_code=status.HTTP_201_CREATED,
    response_class=Response,
    dependencies=_AUTH,
    responses={201: {"model": Product}, **_WRITE_DOC},
)
async def create_product(request: Request, body: ProductCreate) -> Response:
    runtime = _runtime(request)
    payload = await writes.create_product(runtime, body)
    return Response(payload, status.HTTP_201_CREATED, media_type=JSON)


@router.patch(
    "/products/{product_id}",
    response_class=Response,
    dependencies=_AUTH,
    responses={200: {"model": Product}, **_WRITE_DOC},
)
async def update_product(request: Request, product_id: IdPath, body: ProductPatch) -> Response:
    runtime = _runtime(request)
    payload = await writes.update_product(runtime, product_id, body)
    if payload is None:
        return JSONResponse({"detail": f"product {product_id} not found"}, 404)
    return Response(payload, media_type=JSON)


@router.delete(
    "/products/{product_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=_AUTH,
    responses=_WRITE_DOC,
)
async def delete_product(request: Request, product_id: IdPath) -> Response:
    runtime = _runtime(request)
    if not await writes.delete_product(runtime, product_id):
        return JSONResponse({"detail": f"product {product_id} not found"}, 404)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- operations ------------------------------------------------------------------------------


@router.get("/healthz", response_class=Response)
async def healthz(request: Request) -> Response:
    ok, checks = await _runtime(request).health()
    checks["status"] = "ok" if ok else "unavailable"
    return JSONResponse(checks, 200 if ok else 503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    body = generate_latest(_runtime(request).metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
