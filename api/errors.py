"""Error responses, one shape per status, as the OpenAPI document says (api/routes.py).

Every error is `{"detail": ...}`: a sentence (the `Problem` schema) for every status but 422,
FastAPI's list of `{loc, msg, type, input?, ctx?}` for 422, whatever raised it (request
validation, or the database refusing a value the validation let through). Never a 500 or a
traceback for bad input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

log = logging.getLogger(__name__)
_MAX_ECHO = 200  # characters of a refused input echoed back


class RefusedByDatabase(Exception):
    """A value the request validation let through and Postgres refused (a CHECK, a data
    exception): a 422 all the same, in the validation shape, never a 500."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def install(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """`routes`: every route the app serves (for the Allow header of a 405)."""

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(routes, request))
        return JSONResponse({"detail": str(exc.detail)}, exc.status_code, headers or None)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RefusedByDatabase, _refused_by_database)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(Exception, _internal_error)


def _printable(value: Any) -> Any:
    """The refused input, safe to send back: strings that cannot be encoded as UTF-8 (a lone
    surrogate from a \\ud800 escape) would make the error response itself fail."""
    if isinstance(value, str):
        text = value.encode("utf-8", "replace").decode("utf-8")
        return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "..."
    if isinstance(value, dict):
        return {str(_printable(key)): _printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(item) for item in value]
    return value


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _printable(jsonable_encoder(exc.errors()))}, 422)


async def _refused_by_database(request: Request, exc: Exception) -> JSONResponse:
    message = getattr(exc, "message", "refused by the database")
    log.warning("the database refused a validated body: %s", message)
    detail = [{"type": "refused_by_database", "loc": ["body"], "msg": message}]
    return JSONResponse({"detail": detail}, 422)


def _allowed_methods(routes: Sequence[BaseRoute], request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette names only the first route's:
    `Allow: GET` for a resource that also has PATCH and DELETE)."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def read_error(exc: Exception) -> JSONResponse:
    """The response FastAPI's handlers give for an error of a read (for api/fastpath.py,
    which serves reads before FastAPI's routing and its exception handlers)."""
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        log.warning("database unavailable: %s", exc)
        return JSONResponse({"detail": "database unavailable, retry later"}, 503)
    log.error("unhandled error on a read", exc_info=exc)
    return JSONResponse({"detail": "internal error"}, 500)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return JSONResponse({"detail": "database unavailable, retry later"}, 503)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error"}, 500)
