"""The blog example (examples/blog) on the same invalidator and workers as the demo, with no
change to pgbust: authors keyed by uuid, posts by a text slug, comments by (post, number).

Each test warms the entries it names into L1 of both blog instances (and so into Redis),
changes rows out of band (a plain Postgres connection, as psql would), waits until every
instance serves the database's new value of each entry the declaration says the change
kills, then checks that the entries it does not kill are still served from L1 on both
instances and still live in Redis: exactly the declared entries and tags die, on every tier.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import psycopg
import pytest
import redis.asyncio as aioredis

from examples.blog.loaders import LOADERS
from pgbust import declaration
from pgbust.keys import Keyspace
from pgbust.redis_cache import RedisCache
from pgbust.settings import TaskQueueSettings
from pgbust.task_sender import TaskSender
from tests.conftest import API_TOKEN
from tests.examples.conftest import BLOG_CONFIG, BlogStack
from tests.support.servers import wait_until

SETTLE_S = 15.0  # bound on every wait for a change to reach both instances
RENDER = declaration.load(BLOG_CONFIG)


@dataclass(frozen=True)
class Entry:
    name: str  # the cache entry, rendered as the app renders it
    path: str  # the HTTP path that serves it


def author(id: uuid.UUID) -> Entry:
    return Entry(f"author:{id}", f"/authors/{id}")


def post_count(id: uuid.UUID) -> Entry:
    return Entry(f"author:{id}:post-count", f"/authors/{id}/post-count")


def _slug(slug: str) -> tuple[str, str]:
    # the entry's segment (pgbust's escaping) and the URL's (percent-encoding)
    name = RENDER.render("post:{slug}", {"slug": slug}).removeprefix("post:")
    return name, quote(slug, safe="")


def post(slug: str) -> Entry:
    name, url = _slug(slug)
    return Entry(f"post:{name}", f"/posts/{url}")


def comments(slug: str) -> Entry:
    name, url = _slug(slug)
    return Entry(f"post:{name}:comments", f"/posts/{url}/comments")


def comment(slug: str, number: int) -> Entry:
    name, url = _slug(slug)
    return Entry(f"comment:{name}:{number}", f"/posts/{url}/comments/{number}")


@dataclass(frozen=True)
class Served:
    status: int
    body: Any
    tier: str


def served(base: str, entry: Entry) -> Served:
    response = httpx.get(base + entry.path, timeout=5.0)
    body = orjson.loads(response.content) if response.status_code == 200 else None
    return Served(response.status_code, body, response.headers.get("x-cache", "?"))


async def _expected(database_url: str, entries: Iterable[Entry]) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        found: dict[str, Any] = {}
        for entry in entries:
            loaded = await LOADERS.load(conn, entry.name)
            found[entry.name] = None if loaded is None else orjson.loads(loaded.payload)
        return found


def expected(stack: BlogStack, entries: Iterable[Entry]) -> dict[str, Any]:
    """What the blog's own loaders compute from the database now (None: a 404)."""
    return asyncio.run(_expected(stack.database_url, entries))


async def _in_redis(stack: BlogStack, entries: Iterable[Entry]) -> dict[str, Any]:
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        cache = RedisCache(client, Keyspace(stack.namespace))
        live: dict[str, Any] = {}
        for entry in entries:
            _, tags = stack.declaration.resolve(entry.name)
            payload = await cache.peek(entry.name, tags=tags)
            if payload is not None:
                live[entry.name] = orjson.loads(payload)
        return live
    finally:
        await client.aclose()


def in_redis(stack: BlogStack, entries: Iterable[Entry]) -> dict[str, Any]:
    """The entries live in Redis, by name: the read path's own checks (epoch, tag, row tags;
    pgbust.lua PEEK) without taking a lease, which would make a concurrent fill give way."""
    return asyncio.run(_in_redis(stack, entries))


def out_of_band(stack: BlogStack, statement: str, params: dict[str, Any] | None = None) -> None:
    """A write that no part of pgbust sees but through the change capture: one transaction
    of the `;`-separated statements (none holds a literal `;`)."""
    with psycopg.connect(stack.database_url) as conn, conn.transaction():
        for part in statement.split(";"):
            conn.execute(part.encode(), params)


def in_l1_everywhere(stack: BlogStack, entries: Sequence[Entry]) -> None:
    """Read every entry on every instance until it is an L1 hit there (an L1 holds only what
    its process read, and only once the subscriber is confirmed)."""
    for base in stack.urls:
        for entry in entries:
            assert wait_until(lambda: served(base, entry).tier == "L1", SETTLE_S), (
                f"{entry.name} never became an L1 hit on {base}"
            )


def fresh_everywhere(stack: BlogStack, entries: Sequence[Entry]) -> None:
    """Wait (bounded) until every instance serves the database's value of each entry."""
    want = expected(stack, entries)
    for base in stack.urls:
        for entry in entries:

            def fresh(base: str = base, entry: Entry = entry) -> bool:
                got = served(base, entry)
                return got.body == want[entry.name] and (got.status == 200) == (
                    want[entry.name] is not None
                )

            assert wait_until(fresh, SETTLE_S), (
                f"{base} still serves {served(base, entry)!r} for {entry.name}, "
                f"the database says {want[entry.name]!r}"
            )


def change_kills_exactly(
    stack: BlogStack,
    statement: str,
    params: dict[str, Any] | None,
    *,
    killed: Sequence[Entry],
    kept: Sequence[Entry],
) -> None:
    before = expected(stack, [*killed, *kept])
    # a 404 is not cached (there is nothing to evict): only what exists is warmed
    in_l1_everywhere(stack, [e for e in [*killed, *kept] if before[e.name] is not None])
    assert in_redis(stack, kept) == {e.name: before[e.name] for e in kept}  # precondition
    out_of_band(stack, statement, params)
    after = expected(stack, [*killed, *kept])
    changed = [e.name for e in killed if after[e.name] != before[e.name]]
    assert changed == [e.name for e in killed], "a killed entry must change, or nothing is shown"
    fresh_everywhere(stack, killed)
    # the change's one invalidation message reached both instances: what it did not name is
    # still where it was, in every L1 and in Redis
    for base in stack.urls:
        for entry in kept:
            got = served(base, entry)
            assert (got.tier, got.body) == ("L1", before[entry.name]), f"{entry.name} on {base}"
    assert in_redis(stack, kept) == {e.name: before[e.name] for e in kept}
    # and what it killed is either gone from Redis or already refilled with the new value
    for name, value in in_redis(stack, killed).items():
        assert value == after[name], name


@dataclass
class Blog:
    """One test's own rows: two authors, three posts (one slug needing every escape), and
    comments; no two tests share a row, so they share the stack."""

    alice: uuid.UUID
    bob: uuid.UUID
    odd: str  # a slug with ':', '{', '}', spaces and unicode
    plain: str
    bobs: str


@pytest.fixture
def rows(blog: BlogStack) -> Blog:
    tag = uuid.uuid4().hex[:6]
    rows = Blog(uuid.uuid4(), uuid.uuid4(), f"odd: {{{tag}}} ünï", f"plain-{tag}", f"bobs-{tag}")
    out_of_band(
        blog,
        "INSERT INTO blog.authors (id, name) VALUES (%(a)s, 'Alice'), (%(b)s, 'Bob');"
        "INSERT INTO blog.posts (slug, author_id, title) VALUES"
        " (%(odd)s, %(a)s, 'Odd'), (%(plain)s, %(a)s, 'Plain'), (%(bobs)s, %(b)s, 'Bob''s');"
        "INSERT INTO blog.comments (post_slug, number, author, body) VALUES"
        " (%(odd)s, 1, 'x', 'first'), (%(odd)s, 2, 'y', 'second'), (%(plain)s, 1, 'z', 'hi')",
        {"a": rows.alice, "b": rows.bob, "odd": rows.odd, "plain": rows.plain, "bobs": rows.bobs},
    )
    return rows


def test_editing_a_comment_in_place_evicts_it_and_its_list_from_every_tier_only(
    blog: BlogStack, rows: Blog
) -> None:
    change_kills_exactly(
        blog,
        "UPDATE blog.comments SET body = 'edited' WHERE post_slug = %(s)s AND number = 2",
        {"s": rows.odd},
        killed=[comment(rows.odd, 2), comments(rows.odd)],
        kept=[comment(rows.odd, 1), post(rows.odd), comments(rows.plain), post_count(rows.alice)],
    )


def test_a_new_comment_appears_in_its_list_and_under_its_own_number(
    blog: BlogStack, rows: Blog
) -> None:
    change_kills_exactly(
        blog,
        "INSERT INTO blog.comments VALUES (%(s)s, 3, 'w', 'third')",
        {"s": rows.odd},
        killed=[comments(rows.odd), comment(rows.odd, 3)],  # a 404 before
        kept=[comment(rows.odd, 1), comment(rows.odd, 2), post(rows.odd), comments(rows.plain)],
    )


def test_editing_a_post_keyed_by_text_evicts_the_post_not_its_comments(
    blog: BlogStack, rows: Blog
) -> None:
    change_kills_exactly(
        blog,
        "UPDATE blog.posts SET title = 'Odd, edited' WHERE slug = %(s)s",
        {"s": rows.odd},
        killed=[post(rows.odd)],
        kept=[comments(rows.odd), post_count(rows.alice), author(rows.alice), post(rows.plain)],
    )


def test_a_post_moved_to_another_author_changes_both_authors_counts(
    blog: BlogStack, rows: Blog
) -> None:
    change_kills_exactly(
        blog,
        "UPDATE blog.posts SET author_id = %(b)s WHERE slug = %(s)s",
        {"b": rows.bob, "s": rows.plain},
        killed=[post(rows.plain), post_count(rows.alice), post_count(rows.bob)],
        # not kept, nor required to die: the post's comment list. NOTIFY capture sends an
        # UPDATE that changes a depends column as unpaired OLD and NEW tuples, on which every
        # rule of the table renders (wider, never missing: README "The declaration file")
        kept=[author(rows.alice), author(rows.bob), post(rows.odd), comments(rows.odd)],
    )


def test_a_comment_moved_to_another_post_leaves_one_list_and_joins_the_other(
    blog: BlogStack, rows: Blog
) -> None:
    change_kills_exactly(
        blog,
        "UPDATE blog.comments SET post_slug = %(to)s, number = 7"
        " WHERE post_slug = %(s)s AND number = 1",
        {"s": rows.odd, "to": rows.bobs},
        killed=[
            comment(rows.odd, 1),
            comment(rows.bobs, 7),
            comments(rows.odd),
            comments(rows.bobs),
        ],
        kept=[comment(rows.odd, 2), post(rows.odd), post(rows.bobs), comments(rows.plain)],
    )


def test_a_renamed_post_takes_its_comments_along_on_every_tier(blog: BlogStack, rows: Blog) -> None:
    renamed = rows.odd + " (renamed)"
    change_kills_exactly(
        blog,
        "UPDATE blog.posts SET slug = %(to)s WHERE slug = %(s)s",  # comments follow: a cascade
        {"s": rows.odd, "to": renamed},
        killed=[
            post(rows.odd),
            post(renamed),
            comments(rows.odd),
            comments(renamed),
            comment(rows.odd, 1),
            comment(renamed, 1),
        ],
        kept=[post(rows.plain), comments(rows.plain), author(rows.alice)],
    )


def test_deleting_an_author_uuid_keyed_cascades_to_their_posts_and_comments(
    blog: BlogStack, rows: Blog
) -> None:
    change_kills_exactly(
        blog,
        "DELETE FROM blog.authors WHERE id = %(a)s",
        {"a": rows.alice},
        killed=[
            author(rows.alice),
            post_count(rows.alice),
            post(rows.odd),
            comments(rows.odd),
            comment(rows.odd, 2),
            post(rows.plain),
            comments(rows.plain),
        ],
        kept=[author(rows.bob), post_count(rows.bob), post(rows.bobs), comments(rows.bobs)],
    )


def test_a_write_through_the_app_is_read_back_at_once_and_reaches_the_other_instance(
    blog: BlogStack, rows: Blog
) -> None:
    one, _ = blog.urls
    entries = [post(rows.odd), comments(rows.odd)]
    in_l1_everywhere(blog, entries)
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    edit = httpx.put(
        one + post(rows.odd).path, json={"title": "New title", "body": "b"}, headers=headers
    )
    assert edit.status_code == 200, edit.text
    added = httpx.post(
        one + comments(rows.odd).path, json={"author": "me", "body": "new"}, headers=headers
    )
    assert (added.status_code, added.json()["number"]) == (201, 3), added.text
    # read-your-writes on the instance written to: no waiting
    assert served(one, post(rows.odd)).body["title"] == "New title"
    assert [c["number"] for c in served(one, comments(rows.odd)).body["comments"]] == [1, 2, 3]
    fresh_everywhere(blog, entries)


def test_writes_refuse_bad_input_and_missing_tokens_with_a_reason(
    blog: BlogStack, rows: Blog
) -> None:
    base = blog.urls[0]
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    no_token = httpx.put(base + post(rows.odd).path, json={"title": "t"})
    assert no_token.status_code == 401 and "API_TOKEN" in no_token.text
    empty_title = httpx.put(base + post(rows.odd).path, json={"title": ""}, headers=headers)
    assert empty_title.status_code == 422 and "title" in empty_title.text
    assert httpx.get(base + "/authors/not-a-uuid").status_code == 422
    assert httpx.get(base + comment(rows.odd, 0).path).status_code == 422
    assert httpx.get(base + "/posts/a%00b").status_code == 422
    assert (
        httpx.put(base + "/posts/nobody", json={"title": "t"}, headers=headers).status_code == 404
    )


def test_the_worker_warms_blog_entries_with_the_blog_loaders(blog: BlogStack, rows: Blog) -> None:
    entries = [post(rows.bobs), comments(rows.plain), post_count(rows.bob)]
    assert in_redis(blog, entries) == {}  # nobody read them yet
    env = blog.procs.env
    sender = TaskSender(
        TaskQueueSettings(
            redis_url=blog.redis_url,
            namespace=blog.namespace,
            celery_broker_url=env["CELERY_BROKER_URL"],
        )
    )
    try:
        sender.warm([e.name for e in entries])
    finally:
        sender.close()
    want = expected(blog, entries)
    assert wait_until(lambda: in_redis(blog, entries) == want, SETTLE_S), in_redis(blog, entries)


def test_after_all_of_it_the_final_sweep_finds_nothing_stale(blog: BlogStack) -> None:
    """Every row of every table, as every entry it can be read as, on both instances and
    in Redis, equals the database (runs last in this module: after every change above)."""
    with psycopg.connect(blog.database_url) as conn:
        authors = [r[0] for r in conn.execute("SELECT id FROM blog.authors")]
        slugs = [r[0] for r in conn.execute("SELECT slug FROM blog.posts")]
        numbered = conn.execute("SELECT post_slug, number FROM blog.comments").fetchall()
    entries = [
        *(e for a in authors for e in (author(a), post_count(a))),
        *(e for s in slugs for e in (post(s), comments(s))),
        *(comment(s, n) for s, n in numbered),
    ]
    assert len(entries) > 20
    # drained: a probe change, made last, has reached both instances (one capture, one
    # invalidator, one channel: every earlier invalidation was applied before it)
    probe = author(authors[0])
    in_l1_everywhere(blog, [probe])
    out_of_band(
        blog, "UPDATE blog.authors SET name = name || '.' WHERE id = %(a)s", {"a": authors[0]}
    )
    fresh_everywhere(blog, [probe])
    want = expected(blog, entries)
    stale = [
        f"{base} {e.name}: {got!r}"
        for base in blog.urls
        for e in entries
        if (got := served(base, e)).body != want[e.name]
    ]
    stale += [f"redis {n}: {v!r}" for n, v in in_redis(blog, entries).items() if v != want[n]]
    assert stale == []
