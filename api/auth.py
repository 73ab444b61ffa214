"""Bearer-token check of the write endpoints (constant-time comparison)."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status


def check_bearer(request: Request, expected: bytes) -> None:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized("missing Authorization: Bearer <API_TOKEN> header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Authorization header must be 'Bearer <API_TOKEN>'")
    if not hmac.compare_digest(token.strip().encode(), expected):
        raise _unauthorized("invalid bearer token")


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=reason,
        headers={"WWW-Authenticate": "Bearer"},
    )
