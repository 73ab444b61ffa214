"""The blog's HTTP API: reads through pgbust.Cache, two writes with read-your-writes.

    PGBUST_CONFIG=examples/blog/pgbust.toml uvicorn examples.blog.app:app

Everything pgbust needs comes from its settings (DATABASE_URL, REDIS_URL, PGBUST_*) and the
declaration; the app is routes and loaders (loaders.py). Writes need `Authorization: Bearer
$API_TOKEN` when API_TOKEN is set.
"""

from __future__ import annotations

import hmac
import os
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import Response
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

import pgbust
from examples.blog.loaders import LOADERS, MAX_COMMENT_NUMBER
from examples.blog.queries import query
from pgbust.fastapi import CacheDependency, cache_lifespan, cached_response

DECLARATION = Path(__file__).with_name("pgbust.toml")

# a slug is any text of 1 to 200 characters but '/' (it is a path segment) and control
# characters (Postgres text holds no NUL); ':', '{', spaces and unicode are fine
Slug = Annotated[str, PathParam(min_length=1, max_length=200, pattern=r"^[^/\x00-\x1f\x7f]+$")]
Number = Annotated[int, PathParam(ge=1, le=MAX_COMMENT_NUMBER)]


class PostEdit(BaseModel):
    title: str = Field(min_length=1, max_length=500)
    body: str = Field(default="", max_length=100_000, pattern=r"^[^\x00]*$")


class NewComment(BaseModel):
    author: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")
    body: str = Field(max_length=10_000, pattern=r"^[^\x00]*$")


def create_app() -> FastAPI:
    # PGBUST_CONFIG names the declaration for every component; the app defaults to its own
    declaration = pgbust.load_declaration(os.environ.get("PGBUST_CONFIG") or DECLARATION)
    cache = pgbust.Cache(pgbust.CacheSettings(), declaration, LOADERS, pool_name="blog")
    app = FastAPI(title="pgbust blog example", lifespan=cache_lifespan(cache))
    token = os.environ.get("API_TOKEN", "")

    def writer(authorization: Annotated[str, Header()] = "") -> None:
        if token and not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "writes need Authorization: Bearer <API_TOKEN>")

    @app.get("/healthz")
    async def healthz(cache: CacheDependency) -> Any:
        ok, body = await cache.health()
        if not ok:
            raise HTTPException(503, body)
        return body

    @app.get("/authors/{id}")
    async def author(id: uuid.UUID, cache: CacheDependency) -> Response:
        return cached_response(await cache.read("author:{id}", id=id), not_found="no such author")

    @app.get("/authors/{id}/post-count")
    async def post_count(id: uuid.UUID, cache: CacheDependency) -> Response:
        read = await cache.read("author:{id}:post-count", id=id)
        return cached_response(read, not_found="no such author")

    @app.get("/posts/{slug}")
    async def post(slug: Slug, cache: CacheDependency) -> Response:
        return cached_response(await cache.read("post:{slug}", slug=slug), not_found="no such post")

    @app.get("/posts/{slug}/comments")
    async def comments(slug: Slug, cache: CacheDependency) -> Response:
        read = await cache.read("post:{slug}:comments", slug=slug)
        return cached_response(read, not_found="no such post")

    @app.get("/posts/{slug}/comments/{number}")
    async def comment(slug: Slug, number: Number, cache: CacheDependency) -> Response:
        read = await cache.read("comment:{post_slug}:{number}", post_slug=slug, number=number)
        return cached_response(read, not_found="no such comment")

    @app.put("/posts/{slug}", dependencies=[Depends(writer)])
    async def edit_post(slug: Slug, edit: PostEdit, cache: CacheDependency) -> Any:
        async with cache.db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("edit_post"), {"slug": slug, **edit.model_dump()})
            row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, "no such post")
        old = {"slug": slug, "author_id": row["old_author_id"]}
        changed = [c for c in ("title", "body") if row[f"old_{c}"] != row[c]]
        # committed (autocommit): invalidate before answering, so the next read sees it
        await cache.wrote("blog.posts", "update", old=old, new=row, changed=changed)
        return {key: row[key] for key in ("slug", "author_id", "title", "body")}

    @app.post("/posts/{slug}/comments", status_code=201, dependencies=[Depends(writer)])
    async def add_comment(slug: Slug, new: NewComment, cache: CacheDependency) -> Any:
        async with cache.db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("add_comment"), {"slug": slug, **new.model_dump()})
            row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, "no such post")
        await cache.wrote("blog.comments", "insert", new=row)
        return row

    return app


app = create_app()
