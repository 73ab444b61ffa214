"""The API in process (httpx ASGITransport) against real Postgres and Redis.

Races are forced with the read path's after_load hook, which pauses a reader between its
Postgres read and its fill while the test commits a write and runs the invalidation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis

from api.settings import Settings
from db.seed import Counts
from pgbust.cache import Cache as Runtime
from pgbust.keys import Keyspace
from pgbust.protocol import Invalidation, Lease
from pgbust.redis_cache import RedisCache
from pgbust.rules import targets_for, write_change
from tests.conftest import API_TOKEN
from tests.support.demo import DEMO, demo_tags
from tests.support.heartbeat import HeartbeatPlayer
from tests.support.inprocess_api import start_api
from tests.support.processes import ProcessManager
from tests.support.servers import RedisServer

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
MakeApi = Callable[..., Awaitable[tuple[httpx.AsyncClient, Runtime]]]


async def eventually(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def metric(runtime: Runtime, name: str, **labels: str) -> float:
    value = runtime.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.fixture
async def make_api(
    database_url: str,
    redis_server: RedisServer,
    namespace: str,
    seeded: Counts,
    live_capture: HeartbeatPlayer,  # the tests invalidate by themselves (cdc_invalidate)
) -> AsyncIterator[MakeApi]:
    async with AsyncExitStack() as stack:

        async def make(**overrides: Any) -> tuple[httpx.AsyncClient, Runtime]:
            settings = Settings(
                database_url=database_url,
                redis_url=redis_server.url,
                namespace=namespace,
                api_token=API_TOKEN,
                **{"hot_sample_rate": 0.0, **overrides},
            )
            client, runtime = await start_api(stack, settings)
            return client, runtime

        yield make


@pytest.fixture
async def l2(redis_server: RedisServer, keyspace: Keyspace) -> AsyncIterator[RedisCache]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield RedisCache(client, keyspace)
    await client.aclose()


class Pause:
    """An after_load hook that stops the first load of one entry until released."""

    def __init__(self, entry: str) -> None:
        self.entry = entry
        self.loaded = asyncio.Event()
        self.resume = asyncio.Event()
        self.used = False

    async def __call__(self, entry: str, payload: bytes | None) -> None:
        if entry == self.entry and not self.used:
            self.used = True
            self.loaded.set()
            await self.resume.wait()


async def cdc_invalidate(
    l2: RedisCache, product_id: int, *categories: int, op: str = "UPDATE"
) -> None:
    """What the invalidator does for a committed product change (the demo's rules)."""
    first = {"id": product_id, "category_id": categories[0]}
    last = {"id": product_id, "category_id": categories[-1]}
    if op == "INSERT":
        change = write_change("public.products", "insert", new=first)
    elif op == "DELETE":
        change = write_change("public.products", "delete", old=first)
    else:
        change = write_change("public.products", "update", old=first, new=last)
    targets = targets_for(DEMO, change)
    await l2.invalidate(targets, Invalidation.of(targets, origin="cdc"))


# --- read path -------------------------------------------------------------------------------


async def test_first_read_misses_then_l1_serves_the_same_bytes(make_api: MakeApi) -> None:
    client, _ = await make_api()
    first = await client.get("/products/7")
    second = await client.get("/products/7")
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    assert second.headers["X-Cache"] == "L1"
    assert second.content == first.content
    assert first.json()["id"] == 7 and first.json()["version"] == 1


async def test_second_instance_is_served_from_redis(make_api: MakeApi) -> None:
    a, _ = await make_api()
    b, _ = await make_api()
    assert (await a.get("/categories/2/summary")).headers["X-Cache"] == "MISS"
    hit = await b.get("/categories/2/summary")
    assert hit.headers["X-Cache"] == "L2" and hit.json()["count"] == 20


async def test_concurrent_misses_for_one_key_load_postgres_once_per_instance(
    make_api: MakeApi,
) -> None:
    client, runtime = await make_api()
    responses = await asyncio.gather(*(client.get("/products/11") for _ in range(50)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert metric(runtime, "pgbust_api_db_loads_total") == 1


async def test_readers_that_joined_a_cancelled_load_load_for_themselves(
    make_api: MakeApi, l2: RedisCache
) -> None:
    """The load runs in its first reader's task: when that one is cancelled, the readers that
    joined it are not failed with it, they read again (and the lease was given back)."""
    _, runtime = await make_api()
    pause = Pause("product:21")
    runtime.tiers.after_load = pause
    first = asyncio.create_task(runtime.tiers.read("product:21"))
    await asyncio.wait_for(pause.loaded.wait(), 5)
    joiners = [asyncio.create_task(runtime.tiers.read("product:21")) for _ in range(3)]
    await eventually(lambda: metric(runtime, "pgbust_api_single_flight_joins_total") == 3)
    first.cancel()
    results = await asyncio.gather(*joiners)
    assert first.cancelled()
    assert all(r.payload is not None and b'"id":21' in r.payload for r in results)
    assert {r.source for r in results} <= {"MISS", "L1", "L2"}
    assert await l2.peek("product:21", tags=demo_tags("product:21")) is not None  # filled
    assert metric(runtime, "pgbust_api_db_loads_total") == 2  # the cancelled one, one more


async def test_reader_waits_for_the_lease_holder_of_another_instance(make_api: MakeApi) -> None:
    a, runtime_a = await make_api()
    b, runtime_b = await make_api()
    pause = Pause("product:12")
    runtime_a.tiers.after_load = pause
    first = asyncio.create_task(a.get("/products/12"))
    await asyncio.wait_for(pause.loaded.wait(), 5)  # A holds the lease, B must not load
    second = asyncio.create_task(b.get("/products/12"))
    await eventually(lambda: metric(runtime_b, "pgbust_api_cache_misses_total", tier="l1") >= 1)
    pause.resume.set()
    assert (await first).headers["X-Cache"] == "MISS"
    waited = await second
    assert waited.headers["X-Cache"] == "L2" and waited.content == (await first).content
    assert metric(runtime_b, "pgbust_api_db_loads_total") == 0


async def test_reader_behind_a_stalled_lease_reads_postgres_after_its_budget_without_filling(
    make_api: MakeApi, l2: RedisCache
) -> None:
    client, runtime = await make_api()
    runtime.tiers.busy_wait_budget_s = 0.05
    held = await l2.get_or_lease(
        "product:13", lease_ms=10_000, tags=demo_tags("product:13")
    )  # a stalled warmer, say
    assert isinstance(held, Lease)
    started = asyncio.get_running_loop().time()
    response = await client.get("/products/13")
    waited_s = asyncio.get_running_loop().time() - started
    assert response.status_code == 200 and response.headers["X-Cache"] == "MISS"
    assert response.json()["id"] == 13
    assert waited_s < 1.5  # the budget, not the lease time (2 s) or the holder's 10 s
    assert metric(runtime, "pgbust_api_busy_waits_total", outcome="timeout") == 1
    assert metric(runtime, "pgbust_api_db_loads_total") == 1
    # read without filling: nothing stored, the holder's lease untouched and still usable
    assert await l2.client.exists(l2.keyspace.value("product:13")) == 0
    assert (
        await l2.fill(
            "product:13",
            held.token,
            held.stamp,
            response.content,
            rows=(),
            since=held.since,
            tags=demo_tags("product:13"),
        )
        == 1
    )


async def test_unknown_ids_are_404_and_give_their_lease_back(
    make_api: MakeApi, l2: RedisCache
) -> None:
    client, _ = await make_api()
    for path in ("/products/999999", "/categories/999/summary", "/categories/999/products"):
        response = await client.get(path)
        assert response.status_code == 404 and "not found" in response.json()["detail"]
        assert response.headers["X-Cache"] == "MISS"
    assert await l2.client.exists(l2.keyspace.lease("product:999999")) == 0


# --- the fill guard (invariant 3) --------------------------------------------------------------


async def test_invalidation_between_db_read_and_fill_leaves_no_stale_value_in_l1_or_l2(
    make_api: MakeApi, l2: RedisCache, pg: psycopg.Connection[Any]
) -> None:
    client, runtime = await make_api()
    pause = Pause("product:7")
    runtime.tiers.after_load = pause
    reader = asyncio.create_task(client.get("/products/7"))
    await asyncio.wait_for(pause.loaded.wait(), 5)  # the reader holds version 1
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 7")  # the writer commits
    await cdc_invalidate(l2, 7, 1 + 7 % 5)  # the invalidation runs
    await eventually(
        lambda: metric(runtime, "pgbust_api_invalidation_messages_total", kind="evict") >= 1
    )
    pause.resume.set()
    assert (await reader).json()["version"] == 1  # what it read before the commit
    assert metric(runtime, "pgbust_api_fills_refused_total", tier="l2", reason="lease_lost") == 1
    assert "product:7" not in runtime.l1
    assert await l2.peek("product:7", tags=demo_tags("product:7")) is None
    fresh = await client.get("/products/7")
    assert fresh.headers["X-Cache"] == "MISS" and fresh.json()["version"] == 2


async def test_psql_update_during_a_fill_through_the_real_invalidator_is_not_filled_stale(
    make_api: MakeApi, l2: RedisCache, pg: psycopg.Connection[Any], procs: ProcessManager
) -> None:
    procs.invalidator()
    client, runtime = await make_api()
    pause = Pause("product:18")
    runtime.tiers.after_load = pause
    reader = asyncio.create_task(client.get("/products/18"))
    await asyncio.wait_for(pause.loaded.wait(), 5)
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 18")
    evicted = "pgbust_api_invalidation_messages_total"
    await eventually(lambda: metric(runtime, evicted, kind="evict") >= 1, within_s=10)
    pause.resume.set()
    assert (await reader).json()["version"] == 1
    refused = "pgbust_api_fills_refused_total"
    assert sum(metric(runtime, refused, tier="l2", reason=r) for r in ("lease_lost", "invalidated"))
    assert (
        "product:18" not in runtime.l1
        and await l2.peek("product:18", tags=demo_tags("product:18")) is None
    )
    assert (await client.get("/products/18")).json()["version"] == 2


async def test_stale_aggregate_is_not_filled_after_its_category_was_invalidated(
    make_api: MakeApi, l2: RedisCache, pg: psycopg.Connection[Any]
) -> None:
    client, runtime = await make_api()
    pause = Pause("category:3:summary")
    runtime.tiers.after_load = pause
    reader = asyncio.create_task(client.get("/categories/3/summary"))
    await asyncio.wait_for(pause.loaded.wait(), 5)
    pg.execute("UPDATE products SET stock = 0 WHERE id = 2")  # product 2 is in category 3
    await cdc_invalidate(l2, 2, 3)
    pause.resume.set()
    old = (await reader).json()
    assert metric(runtime, "pgbust_api_fills_refused_total", tier="l2", reason="invalidated") == 1
    assert await l2.peek("category:3:summary", tags=demo_tags("category:3:summary")) is None
    fresh = await client.get("/categories/3/summary")
    assert fresh.json()["total_stock"] < old["total_stock"] or old["total_stock"] == 0


async def test_l2_hit_read_before_an_invalidation_is_not_kept_in_l1(
    make_api: MakeApi, l2: RedisCache, pg: psycopg.Connection[Any]
) -> None:
    a, _ = await make_api()
    b, runtime_b = await make_api()
    await a.get("/products/8")  # now in L2
    # B takes its L1 ticket, reads the old value from L2; the invalidation lands before B's put
    ticket = runtime_b.l1.ticket("product:8", demo_tags("product:8"))
    old = await l2.peek("product:8", tags=demo_tags("product:8"))
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 8")
    await cdc_invalidate(l2, 8, 1 + 8 % 5)
    await eventually(lambda: not ticket.valid)
    assert old is not None and not runtime_b.l1.put(ticket, old)
    fresh = await b.get("/products/8")
    assert fresh.json()["version"] == 2


# --- writes: read-your-writes (invariant 6), dependencies (invariant 7) ----------------------


async def test_patch_is_visible_to_the_next_read_on_every_tier(make_api: MakeApi) -> None:
    client, _ = await make_api()
    other, _ = await make_api()
    for c in (client, other, client, other):
        await c.get("/products/9")  # cached in L2 and both L1s
    patched = await client.patch("/products/9", json={"stock": 5}, headers=AUTH)
    assert patched.status_code == 200
    assert patched.json()["version"] == 2 and patched.json()["stock"] == 5
    mine = await client.get("/products/9")
    assert mine.json() == patched.json() and mine.headers["X-Cache"] != "L1"
    assert (await other.get("/products/9")).json()["version"] == 2


async def test_moving_a_product_invalidates_the_old_and_the_new_category(
    make_api: MakeApi,
) -> None:
    client, _ = await make_api()
    old_before = (await client.get("/categories/2/summary")).json()  # product 1 is in cat 2
    new_before = (await client.get("/categories/4/summary")).json()
    page_before = (await client.get("/categories/4/products?limit=100")).json()
    moved = await client.patch("/products/1", json={"category_id": 4}, headers=AUTH)
    assert moved.status_code == 200 and moved.json()["category_id"] == 4
    assert (await client.get("/categories/2/summary")).json()["count"] == old_before["count"] - 1
    assert (await client.get("/categories/4/summary")).json()["count"] == new_before["count"] + 1
    page = (await client.get("/categories/4/products?limit=100")).json()
    assert len(page["items"]) == len(page_before["items"]) + 1


async def test_post_returns_201_with_version_and_is_readable_and_counted(
    make_api: MakeApi,
) -> None:
    client, _ = await make_api()
    before = (await client.get("/categories/5/summary")).json()["count"]
    created = await client.post(
        "/products",
        json={"category_id": 5, "name": "New", "price_cents": 123, "stock": 4},
        headers=AUTH,
    )
    assert created.status_code == 201
    body = created.json()
    assert body["version"] == 1 and body["name"] == "New"
    assert (await client.get(f"/products/{body['id']}")).json() == body
    assert (await client.get("/categories/5/summary")).json()["count"] == before + 1


async def test_delete_returns_204_and_the_next_read_is_404(make_api: MakeApi) -> None:
    client, _ = await make_api()
    assert (await client.get("/products/10")).status_code == 200
    assert (await client.delete("/products/10", headers=AUTH)).status_code == 204
    assert (await client.get("/products/10")).status_code == 404
    assert (await client.delete("/products/10", headers=AUTH)).status_code == 404


async def test_ttl_mode_writes_do_not_invalidate_and_cache_expires(make_api: MakeApi) -> None:
    client, runtime = await make_api(cache_mode="ttl", cache_ttl_s=1.5)
    assert runtime.subscriber is None
    await client.get("/products/13")
    await client.patch("/products/13", json={"stock": 1}, headers=AUTH)
    cached = await client.get("/products/13")
    assert cached.headers["X-Cache"] == "L1" and cached.json()["version"] == 1
    await asyncio.sleep(1.6)  # the TTL is what this mode is about
    assert (await client.get("/products/13")).json()["version"] == 2


async def test_off_mode_always_reads_postgres(make_api: MakeApi) -> None:
    client, runtime = await make_api(cache_mode="off")
    for _ in range(3):
        response = await client.get("/products/14")
        assert response.headers["X-Cache"] == "MISS"
    assert metric(runtime, "pgbust_api_db_loads_total") == 3


# --- bad input and bad tokens ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers,reason",
    [
        ({}, "missing"),
        ({"Authorization": "Basic abc"}, "Bearer"),
        ({"Authorization": "Bearer wrong-token-0123456789"}, "invalid"),
    ],
)
async def test_writes_without_the_right_token_are_401_with_a_reason(
    make_api: MakeApi, headers: dict[str, str], reason: str
) -> None:
    client, _ = await make_api()
    for method, path in (
        ("POST", "/products"),
        ("PATCH", "/products/1"),
        ("DELETE", "/products/1"),
    ):
        response = await client.request(method, path, json={"bad": "body"}, headers=headers)
        assert response.status_code == 401 and reason in response.json()["detail"]
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "/products/abc", None),
        ("GET", "/products/0", None),
        ("GET", "/products/99999999999999999999999", None),
        ("GET", "/categories/1/products?limit=0", None),
        ("GET", "/categories/1/products?limit=1000", None),
        ("GET", "/categories/1/products?offset=-1", None),
        ("POST", "/products", {"category_id": 1, "name": "x"}),
        ("POST", "/products", {"category_id": 1, "name": "", "price_cents": 1}),
        ("POST", "/products", {"category_id": 1, "name": "x", "price_cents": -1}),
        ("POST", "/products", {"category_id": 1, "name": "x", "price_cents": "1"}),
        ("POST", "/products", {"category_id": 1, "name": "x", "price_cents": 1, "extra": 1}),
        ("PATCH", "/products/1", {}),
        ("PATCH", "/products/1", {"stock": None}),
        ("PATCH", "/products/1", {"stock": 2**40}),
    ],
)
async def test_bad_input_is_422_json_never_500(
    make_api: MakeApi, method: str, path: str, body: Any
) -> None:
    client, _ = await make_api()
    response = await client.request(method, path, json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert "detail" in response.json() and "Traceback" not in response.text


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", "/products", {"category_id": 999, "name": "x", "price_cents": 1}),
        ("PATCH", "/products/1", {"category_id": 999}),
    ],
)
async def test_a_category_that_does_not_exist_is_409_and_changes_nothing(
    make_api: MakeApi, method: str, path: str, body: Any
) -> None:
    """The body is well formed; the database has no such category: the state is in the way."""
    client, _ = await make_api()
    before = (await client.get("/products/1")).json()
    response = await client.request(method, path, json=body, headers=AUTH)
    assert response.status_code == 409, response.text
    assert response.json() == {"detail": "category_id 999 does not exist"}
    assert (await client.get("/products/1")).json()["version"] == before["version"]


async def test_malformed_json_body_is_422(make_api: MakeApi) -> None:
    client, _ = await make_api()
    response = await client.post(
        "/products", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 422


async def test_patch_and_delete_of_unknown_product_are_404(make_api: MakeApi) -> None:
    client, _ = await make_api()
    assert (
        await client.patch("/products/424242", json={"stock": 1}, headers=AUTH)
    ).status_code == 404
    assert (await client.delete("/products/424242", headers=AUTH)).status_code == 404


async def test_metrics_and_docs_are_served(make_api: MakeApi) -> None:
    client, _ = await make_api()
    await client.get("/products/1")
    text = (await client.get("/metrics")).text
    for name in (
        "pgbust_api_cache_hits_total",
        "pgbust_api_l1_entries",
        "pgbust_api_l1_evictions_total",
        "pgbust_api_fills_refused_total",
        "pgbust_api_subscriber_reconnects_total",
        "pgbust_api_request_seconds_bucket",
        "pgbust_api_gc_pause_seconds_bucket",
    ):
        assert name in text
    assert (await client.get("/docs")).status_code == 200
    assert "/products/{product_id}" in (await client.get("/openapi.json")).json()["paths"]


async def test_epoch_change_without_a_message_still_flushes_l1(
    make_api: MakeApi, l2: RedisCache
) -> None:
    client, runtime = await make_api()
    await client.get("/products/15")
    assert (await client.get("/products/15")).headers["X-Cache"] == "L1"
    await l2.client.incr(l2.keyspace.epoch)  # a flush whose message this instance never saw
    await eventually(lambda: "product:15" not in runtime.l1, within_s=3)
    assert (await client.get("/products/15")).headers["X-Cache"] == "MISS"


async def test_read_after_a_write_does_not_join_a_load_that_started_before_it(
    make_api: MakeApi,
) -> None:
    client, runtime = await make_api()
    pause = Pause("product:16")
    runtime.tiers.after_load = pause
    early = asyncio.create_task(client.get("/products/16"))
    await asyncio.wait_for(pause.loaded.wait(), 5)  # a load of version 1 is in flight
    patched = await client.patch("/products/16", json={"stock": 3}, headers=AUTH)
    assert patched.json()["version"] == 2
    late = await client.get("/products/16")  # must not join the early load
    assert late.json()["version"] == 2
    pause.resume.set()
    assert (await early).json()["version"] == 1
    assert (await client.get("/products/16")).json()["version"] == 2


async def test_reads_are_sampled_into_the_hot_set(make_api: MakeApi, l2: RedisCache) -> None:
    client, _ = await make_api(hot_sample_rate=1.0)
    for _ in range(3):
        await client.get("/products/17")
    score = None
    for _ in range(200):  # the counting is fire-and-forget: poll until it landed
        score = await l2.client.zscore(l2.keyspace.hot, "product:17")
        if score == 3:
            break
        await asyncio.sleep(0.01)
    assert score == 3


async def test_l1_hits_before_and_through_routing_answer_alike(make_api: MakeApi) -> None:
    client, _ = await make_api()
    for path in ("/products/19", "/categories/2/products?limit=3&offset=1"):
        first = await client.get(path)
        fast = await client.get(path)  # canonical path: answered before FastAPI routing
        routed = await client.get(path.replace("/19", "/019").replace("/2/", "/02/"))
        assert first.headers["X-Cache"] == "MISS"
        for hit in (fast, routed):
            assert hit.headers["X-Cache"] == "L1" and hit.content == first.content
            assert hit.headers["content-type"] == "application/json"


@pytest.mark.parametrize("cache_mode", ["cdc", "off"])
async def test_misses_l2_hits_and_404s_before_and_through_routing_answer_alike(
    make_api: MakeApi, cache_mode: str
) -> None:
    # the canonical path is served before FastAPI's routing, the leading zero through it:
    # the same read path, the same bytes, status and headers
    a, _ = await make_api(cache_mode=cache_mode)
    b, _ = await make_api(cache_mode=cache_mode, l1_max_entries=0)  # every read below L1
    for fast, routed in [
        ("/products/23", "/products/023"),
        ("/categories/3/summary", "/categories/03/summary"),
        ("/categories/3/products?limit=2&offset=2", "/categories/03/products?limit=2&offset=2"),
        ("/products/99999999", "/products/099999999"),  # 404
        ("/categories/999/summary", "/categories/0999/summary"),
    ]:
        first, second = await a.get(fast), await a.get(routed)
        lower_fast, lower_routed = await b.get(fast), await b.get(routed)
        for one, other in [(first, second), (lower_fast, lower_routed)]:
            assert (one.status_code, one.content) == (other.status_code, other.content), fast
            assert one.headers["content-type"] == other.headers["content-type"]
        if first.status_code == 200:
            assert first.headers["X-Cache"] == "MISS"
            want = "MISS" if cache_mode == "off" else "L2"
            assert lower_fast.headers["X-Cache"] == lower_routed.headers["X-Cache"] == want
        else:
            assert first.status_code == 404 and "not found" in first.json()["detail"]


async def test_ttl_mode_l1_copy_of_an_l2_entry_expires_with_it(make_api: MakeApi) -> None:
    a, _ = await make_api(cache_mode="ttl", cache_ttl_s=3.0)
    b, runtime_b = await make_api(cache_mode="ttl", cache_ttl_s=3.0)
    await a.get("/products/20")  # fills L2 with a 3 s TTL
    await asyncio.sleep(1.0)
    assert (await b.get("/products/20")).headers["X-Cache"] == "L2"
    item = runtime_b.l1._items["product:20"]
    # B copied an entry 1 s into its life: it must not outlive it (expire ~2 s from now)
    assert item.expires_at - runtime_b.l1.clock() <= 2.05
