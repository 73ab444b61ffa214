"""Bad NOTIFY payloads sent by hand with pg_notify on the invalidator's channel.

Each malformed, truncated, oversized, unknown-table or wrong-version payload must lead to a
*wider* invalidation (the namespace epoch is bumped: everything cached is dead) and a
counter in /metrics, never a crash; and the daemon must go on applying good changes.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import psycopg
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.keys import product_entry
from db import seed
from pgbust.keys import Keyspace
from pgbust.protocol import Hit, Lease
from pgbust.redis_cache import RedisCache
from tests.support.demo import demo_tags
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import RedisServer, wait_until

CHANNEL = "pgbust_changes"
GOOD = (
    '{"v":2,"t":"public.products","op":"U","ts":1700000000000000,"c":["id","category_id"],'
    '"r":[["3","4"]]}'
)
ROWS = '"r":[["3","4"]]'

MALFORMED: dict[str, str] = {
    "empty": "",
    "not_json": "hello there",
    "json_null": "null",
    "json_number": "42",
    "json_array": "[1,2,3]",
    "json_string": '"products"',
    "no_table": GOOD.replace('"t":"public.products",', ""),
    "empty_table": GOOD.replace('"t":"public.products"', '"t":""'),
    "table_not_string": GOOD.replace('"t":"public.products"', '"t":7'),
    "old_version_1": '{"v":1,"t":"products","op":"U","ts":1,"c":["id","category_id"],"r":[[3,4]]}',
    "unknown_version_3": GOOD.replace('"v":2', '"v":3'),
    "version_as_string": GOOD.replace('"v":2', '"v":"2"'),
    "version_missing": GOOD.replace('"v":2,', ""),
    "bad_op": GOOD.replace('"op":"U"', '"op":"X"'),
    "op_not_string": GOOD.replace('"op":"U"', '"op":1'),
    "truncate_with_rows": GOOD.replace('"op":"U"', '"op":"T"'),
    "rows_not_list": GOOD.replace(ROWS, '"r":"3,4"'),
    "rows_empty": GOOD.replace(ROWS, '"r":[]'),
    "row_too_short": GOOD.replace(ROWS, '"r":[["3"]]'),
    "row_too_long": GOOD.replace(ROWS, '"r":[["3","4","5"]]'),
    "row_not_list": GOOD.replace(ROWS, '"r":["3"]'),
    "columns_missing": GOOD.replace('"c":["id","category_id"],', ""),
    "columns_not_strings": GOOD.replace('"c":["id","category_id"]', '"c":[1,2]'),
    "columns_twice": GOOD.replace('"c":["id","category_id"]', '"c":["id","id"]'),
    "ids_as_integers": GOOD.replace(ROWS, '"r":[[3,4]]'),
    "ids_as_floats": GOOD.replace(ROWS, '"r":[[3.5,"4"]]'),
    "ids_as_objects": GOOD.replace(ROWS, '"r":[[{"a":1},"4"]]'),
    "ids_null": GOOD.replace(ROWS, '"r":[[null,null]]'),
    "missing_key_column": GOOD.replace('"c":["id","category_id"]', '"c":["id","sku"]'),
    "deep_nesting": '{"v":2,"t":"public.products","op":"U","r":' + "[" * 3000 + "]" * 3000 + "}",
    "oversized_junk": "x" * 7990,
    "oversized_rows": '{"v":2,"t":"public.products","op":"U","ts":1,"c":["id","category_id"],'
    '"r":[' + ",".join(['["1","1"]'] * 700) + ',["1"]]}',
    "unicode_junk": '{"v":2,"t":"pr\u00f6ducts\u202e","op":"U","r":[["\u2603",1]]}',
    "unknown_table": GOOD.replace('"t":"public.products"', '"t":"public.no_such_table"'),
    "unknown_table_all": '{"v":2,"t":"public.orders","op":"T","ts":1,"all":true}',
}
# well-formed payloads whose rows cannot be keyed, or of a table without rules: they flush
# through the rules (counted in epoch_bumps), they are not "malformed payloads"
WELL_FORMED = {
    "ids_as_integers",
    "ids_as_floats",
    "ids_as_objects",
    "ids_null",
    "missing_key_column",
    "unknown_table",
    "unknown_table_all",
}
# every truncation point of a good payload
TRUNCATED = {f"truncated_at_{n}": GOOD[:n] for n in range(1, len(GOOD), 7)}
CASES = {**MALFORMED, **TRUNCATED}


def _metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            match = re.match(rf"^{name}(?:_total)?(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
            if match:
                total += float(match.group(2))
    return total


class Daemon:
    def __init__(self, proc: ManagedProcess, redis_server: RedisServer, namespace: str) -> None:
        self.proc = proc
        self.keyspace = Keyspace(namespace)
        self.client = redis_server.client()

    def epoch(self) -> int:
        raw = self.client.get(self.keyspace.epoch)
        return int(raw or 0)

    def metrics(self) -> str:
        return httpx.get(self.proc.base_url + "/metrics", timeout=2).text

    def malformed(self) -> float:
        return _metric_sum(self.metrics(), "pgbust_invalidator_malformed_payloads")

    def epoch_bumps(self) -> float:
        return _metric_sum(self.metrics(), "pgbust_invalidator_epoch_bumps")

    def healthy(self) -> bool:
        return self.proc.alive() and httpx.get(self.proc.base_url + "/healthz").status_code == 200


@pytest.fixture
def daemon(
    procs: ProcessManager, seeded: seed.Counts, redis_server: RedisServer, namespace: str
) -> Daemon:
    proc = procs.invalidator()
    daemon = Daemon(proc, redis_server, namespace)
    assert wait_until(lambda: "active" in httpx.get(proc.base_url + "/healthz").text, 20)
    return daemon


def _notify(pg: psycopg.Connection[Any], payload: str) -> None:
    pg.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


async def _cache_entry(redis_url: str, namespace: str, entry: str) -> None:
    client: Any = redis.asyncio.Redis.from_url(redis_url)
    try:
        cache = RedisCache(client, Keyspace(namespace))
        # the flushes of earlier fuzzed payloads may still be landing: a fill they refuse
        # (-1, the epoch moved) is tried again, a bounded number of times
        for _ in range(50):
            result = await cache.get_or_lease(entry, tags=demo_tags(entry))
            if isinstance(result, Hit):
                return
            assert isinstance(result, Lease)
            payload = b'{"cached":true}'
            stored = await cache.fill(
                entry,
                result.token,
                result.stamp,
                payload,
                rows=(),
                since=result.since,
                tags=demo_tags(entry),
            )
            if stored == 1:
                return
            assert stored == -1
        raise AssertionError(f"{entry} could not be cached: every fill was refused")
    finally:
        await client.aclose()


def _still_applies_good_changes(
    daemon: Daemon, pg: psycopg.Connection[Any], redis_server: RedisServer, namespace: str
) -> None:
    """A cached product is deleted from Redis after a real UPDATE: the daemon still works,
    and (NOTIFY keeps order) every payload sent before it has been handled."""
    entry = product_entry(5)
    asyncio.run(_cache_entry(redis_server.url, namespace, entry))
    key = daemon.keyspace.value(entry)
    assert daemon.client.exists(key)
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 5")
    assert wait_until(lambda: not daemon.client.exists(key), 10), daemon.proc.log_tail()
    assert daemon.healthy()


def test_bad_payloads_flush_everything_count_and_never_crash(
    daemon: Daemon, pg: psycopg.Connection[Any], redis_server: RedisServer, namespace: str
) -> None:
    failures = []
    for name, payload in CASES.items():
        before_epoch, before_bumps = daemon.epoch(), daemon.epoch_bumps()
        before_malformed = daemon.malformed()
        _notify(pg, payload)
        if not wait_until(lambda: daemon.epoch() > before_epoch, 10):
            failures.append(f"{name}: no wider invalidation (epoch not bumped)")
            continue
        if daemon.epoch_bumps() <= before_bumps:
            failures.append(f"{name}: epoch bump not counted")
        if name not in WELL_FORMED and not wait_until(
            lambda: daemon.malformed() > before_malformed,
            5,
        ):
            failures.append(f"{name}: malformed payload not counted")
        assert daemon.healthy(), f"{name} broke the daemon:\n{daemon.proc.log_tail()}"
    _still_applies_good_changes(daemon, pg, redis_server, namespace)
    print(f"NOTIFY hand-written cases: {len(CASES)}")
    assert not failures, "\n".join(failures)


FUZZ_EXAMPLES = 150
_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
_payload_dicts = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, 0, "1", None, True]),
        "t": st.sampled_from(["public.products", "public.categories", "products", "", "zzz", 1]),
        "op": st.sampled_from(["I", "U", "D", "T", "?", 0]),
        "ts": st.integers() | st.text(max_size=3),
        "c": st.lists(st.sampled_from(["id", "category_id", "x", 1]), max_size=3) | _json,
        "r": st.lists(st.lists(st.integers(-5, 10**12).map(str) | _json, max_size=3), max_size=4)
        | _json,
        "p": st.booleans() | _json,
        "w": st.lists(st.sampled_from(["stock", "price_cents", "x"]), max_size=2) | _json,
        "all": st.booleans() | _json,
    },
)


def test_fuzzed_payloads_never_crash_the_daemon(
    daemon: Daemon, pg: psycopg.Connection[Any], redis_server: RedisServer, namespace: str
) -> None:
    import orjson

    sent: list[int] = []

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(body=_payload_dicts | st.text(max_size=200).map(lambda s: {"raw": s}))
    def send(body: dict[str, Any]) -> None:
        if set(body) == {"raw"}:
            text = str(body["raw"]).replace("\x00", "")
        else:
            try:
                text = orjson.dumps(body).decode()
            except (TypeError, orjson.JSONEncodeError):
                return
        if len(text.encode()) >= 7999:
            return
        _notify(pg, text)
        sent.append(1)

    send()
    assert len(sent) >= FUZZ_EXAMPLES // 2
    _still_applies_good_changes(daemon, pg, redis_server, namespace)
    print(f"NOTIFY fuzz: {len(sent)} random payloads, {len(CASES)} hand-written cases")
