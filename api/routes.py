"""HTTP endpoints. Reads serve the cached bytes as they are (no re-serialisation).

Every status an operation can answer is in its `responses`, with the body it really has:
`Problem` ({"detail": "<sentence>"}) for every error but 422, FastAPI's validation list for
422 (api/errors.py renders every 422 that way). The document is checked against the running
API by Schemathesis (tests/integration/test_bad_input_http.py).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, Security, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import writes
from api.auth import check_bearer
from api.keys import category_page_entry, category_summary_entry, product_entry
from api.models import (
    MAX_ID,
    MAX_OFFSET,
    MAX_PAGE,
    CategoryPage,
    CategorySummary,
    Health,
    Problem,
    Product,
    ProductCreate,
    ProductPatch,
)
from pgbust.cache import Cache
from pgbust.fastapi import get_cache

JSON = "application/json"
Responses = dict[int | str, dict[str, Any]]

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
_X_CACHE = {"X-Cache": {"description": "L1, L2 or MISS", "schema": {"type": "string"}}}
_UNAVAILABLE: Responses = {503: {"model": Problem, "description": "Postgres is unreachable"}}


def _doc(model: type[Any], what: str) -> Responses:
    return {
        200: {"model": model, "headers": _X_CACHE},
        404: {"model": Problem, "description": f"no such {what}"},
        **_UNAVAILABLE,
    }


class TokenFirstRoute(APIRoute):
    """A write route: the bearer token is checked before FastAPI reads the body, so a request
    without the right token is a 401 whatever its body (even one that is not JSON at all).

    The check runs in the route's own coroutine: no dependency, no thread hop per write."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            check_bearer(request, request.app.state.api_token)
            return await handler(request)

        return checked


router = APIRouter()
write_router = APIRouter(route_class=TokenFirstRoute)


def _runtime(request: Request) -> Cache:
    return get_cache(request)


async def _serve(request: Request, entry: str, what: str) -> Response:
    result = await _runtime(request).read(entry)
    headers = {"X-Cache": result.source}
    if result.payload is None:
        return JSONResponse({"detail": f"{what} not found"}, status.HTTP_404_NOT_FOUND, headers)
    return Response(result.payload, media_type=JSON, headers=headers)


# --- reads -----------------------------------------------------------------------------------


@router.get("/products/{product_id}", response_class=Response, responses=_doc(Product, "product"))
async def get_product(request: Request, product_id: IdPath) -> Response:
    return await _serve(request, product_entry(product_id), f"product {product_id}")


@router.get(
    "/categories/{category_id}/products",
    response_class=Response,
    responses=_doc(CategoryPage, "category"),
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
    "/categories/{category_id}/summary",
    response_class=Response,
    responses=_doc(CategorySummary, "category"),
)
async def get_category_summary(request: Request, category_id: IdPath) -> Response:
    return await _serve(request, category_summary_entry(category_id), f"category {category_id}")


# --- writes ----------------------------------------------------------------------------------

# Documents the bearer scheme (and lets Schemathesis test it); never raises: the token is
# checked by TokenFirstRoute, before the body is even read.
_BEARER = [Security(HTTPBearer(auto_error=False, description="API_TOKEN"))]
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
_WRITE_DOC: Responses = {
    400: {"model": Problem, "description": "the body could not be read (not UTF-8 JSON text)"},
    401: {"model": Problem, "description": "missing or wrong token", "headers": _WWW_AUTHENTICATE},
    **_UNAVAILABLE,
}
_NO_SUCH_PRODUCT: Responses = {404: {"model": Problem, "description": "no such product"}}
_NO_SUCH_CATEGORY: Responses = {
    409: {"model": Problem, "description": "category_id names no category"}
}


@write_router.post(
    "/products",
    status_code=status.HTTP_201_CREATED,
    response_class=Response,
    dependencies=_BEARER,
    responses={201: {"model": Product}, **_WRITE_DOC, **_NO_SUCH_CATEGORY},
)
async def create_product(request: Request, body: ProductCreate) -> Response:
    runtime = _runtime(request)
    payload = await writes.create_product(runtime, body)
    return Response(payload, status.HTTP_201_CREATED, media_type=JSON)


@write_router.patch(
    "/products/{product_id}",
    response_class=Response,
    dependencies=_BEARER,
    responses={
        200: {"model": Product},
        **_WRITE_DOC,
        **_NO_SUCH_PRODUCT,
        **_NO_SUCH_CATEGORY,
    },
)
async def update_product(request: Request, product_id: IdPath, body: ProductPatch) -> Response:
    runtime = _runtime(request)
    payload = await writes.update_product(runtime, product_id, body)
    if payload is None:
        return JSONResponse({"detail": f"product {product_id} not found"}, 404)
    return Response(payload, media_type=JSON)


@write_router.delete(
    "/products/{product_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=_BEARER,
    responses={
        401: _WRITE_DOC[401],
        **_NO_SUCH_PRODUCT,
        **_UNAVAILABLE,
    },
)
async def delete_product(request: Request, product_id: IdPath) -> Response:
    runtime = _runtime(request)
    if not await writes.delete_product(runtime, product_id):
        return JSONResponse({"detail": f"product {product_id} not found"}, 404)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- operations ------------------------------------------------------------------------------


@router.get(
    "/healthz",
    response_class=Response,
    responses={
        200: {"model": Health},
        503: {"model": Health, "description": "Postgres, Redis or the subscription is down"},
    },
)
async def healthz(request: Request) -> Response:
    ok, checks = await _runtime(request).health()
    checks["status"] = "ok" if ok else "unavailable"
    return JSONResponse(checks, 200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    body = generate_latest(_runtime(request).metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
