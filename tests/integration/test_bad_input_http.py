"""Bad HTTP input against a real API process: schema fuzzing, SQL injection strings, tokens.

Schemathesis generates requests from the API's own OpenAPI schema, valid (positive) and
invalid (negative) ones, with and without the write token: no 500, no hang, no stack trace.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from db import seed
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import RedisServer

TOKEN = "http-fuzz-token-0123456789"
EXAMPLES = int(os.environ.get("PGBUST_FUZZ_EXAMPLES", "40"))  # per operation and mode
SLOW_S = 5.0
TRACE_MARKERS = ("Traceback", 'File "/', "psycopg.", "redis.exceptions", "asyncpg")

SQL_INJECTION = [
    "'; DROP TABLE products; --",
    "' OR '1'='1",
    "1; DELETE FROM categories",
    "Robert'); DROP TABLE students;--",
    '" OR ""="',
    "%(id)s %s {0} $1",
    "\\'; SELECT pg_sleep(10); --",
    "' UNION SELECT version(), null --",
    "1' AND 1=CONVERT(int, (SELECT @@version)) --",
    "admin'/*",
    "${jndi:ldap://x/a}",
    "<script>alert(1)</script>",
    "\u2028\u2029 zero\u200bwidth \U0001f4a3",
    "line\nbreak\ttab",
    "back\\slash",
]


@pytest.fixture(scope="module")
def api(
    database_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PGBUST_") and k not in {"API_TOKEN", "CELERY_BROKER_URL"}
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_server.url,
        CELERY_BROKER_URL=f"redis://127.0.0.1:{redis_server.port}/1",
        API_TOKEN=TOKEN,
        PGBUST_NAMESPACE=f"fuzz{uuid.uuid4().hex[:8]}",
        PYTHONUNBUFFERED="1",
    )
    seed.seed(database_url, products=50, categories=3, replace=True)
    manager = ProcessManager(env, tmp_path_factory.mktemp("http-fuzz"))
    yield manager.api("api-fuzz")
    manager.stop_all()


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.statuses: Counter[int] = Counter()
        self.problems: list[str] = []
        self.unsatisfiable = 0

    def check(self, label: str, response: Any, elapsed: float) -> None:
        self.cases += 1
        self.statuses[response.status_code] += 1
        text = response.text
        if response.status_code >= 500:
            self.problems.append(f"{label}: {response.status_code} {text[:200]}")
        if elapsed > SLOW_S:
            self.problems.append(f"{label}: took {elapsed:.1f}s")
        if any(marker in text for marker in TRACE_MARKERS):
            self.problems.append(f"{label}: internals in the body: {text[:200]}")
        if response.status_code >= 400 and response.status_code != 405:
            try:
                body = response.json()
            except ValueError:
                self.problems.append(f"{label}: error body is not JSON: {text[:100]}")
                return
            if not isinstance(body, dict) or "detail" not in body:
                self.problems.append(f"{label}: error body without detail: {text[:100]}")


def _fuzz(
    api: ManagedProcess, operation: Any, mode: GenerationMode, with_token: bool, tally: Tally
) -> None:
    write = operation.method.upper() in {"POST", "PATCH", "DELETE"}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        headers = dict(case.headers or {})
        if with_token:
            headers.update(_auth())
        started = time.monotonic()
        response = case.call(base_url=api.base_url, headers=headers, timeout=10)
        label = (
            f"{operation.label} {mode.value} token={with_token} "
            f"{case.path_parameters} {case.query} {str(case.body)[:80]}"
        )
        tally.check(label, response, time.monotonic() - started)
        if write and not with_token and 200 <= response.status_code < 300:
            tally.problems.append(f"{label}: write without token")

    try:
        run()
    except Unsatisfiable:
        tally.unsatisfiable += 1  # nothing to make invalid (an operation without parameters)


def test_schema_fuzzing_never_500_never_hangs(api: ManagedProcess) -> None:
    schema = schemathesis.openapi.from_url(api.base_url + "/openapi.json")
    tally = Tally()
    results: list[Any] = list(schema.get_all_operations())
    operations = [result.ok() for result in results]
    assert len(operations) >= 6, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for with_token in (True, False):
                _fuzz(api, operation, mode, with_token, tally)
    print(f"HTTP fuzz: {tally.cases} requests over {len(operations)} operations; {tally.statuses}")
    assert tally.cases >= len(operations) * 20
    assert api.alive()
    assert not tally.problems, "\n".join(tally.problems[:20])


def test_sql_injection_strings_are_stored_and_returned_verbatim(
    api: ManagedProcess, database_url: str
) -> None:
    with httpx.Client(base_url=api.base_url, timeout=10, headers=_auth()) as http:
        for text in SQL_INJECTION:
            created = http.post(
                "/products", json={"category_id": 1, "name": text, "price_cents": 1, "stock": 1}
            )
            assert created.status_code == 201, created.text
            product = created.json()
            assert product["name"] == text
            fetched = http.get(f"/products/{product['id']}")
            assert fetched.json()["name"] == text
            patched = http.patch(f"/products/{product['id']}", json={"name": text[::-1] or "x"})
            assert patched.status_code == 200, patched.text
            assert http.get(f"/products/{product['id']}").json()["name"] == (text[::-1] or "x")
        # injection strings in path and query parameters are just bad input
        for text in SQL_INJECTION:
            for path, params in (
                (f"/products/{quote(text, safe='')}", {}),
                ("/categories/1/products", {"limit": text}),
                ("/categories/1/products", {"offset": text}),
            ):
                response = http.get(path, params=params)
                assert response.status_code in {404, 422}, (path, params, response.status_code)
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM products").fetchone()
        assert row is not None and row[0] >= len(SQL_INJECTION)  # nothing was dropped
    count = len(SQL_INJECTION)
    print(f"SQL injection strings: {count} stored and returned, {count * 3} in URLs")


BAD_AUTH = [
    None,
    "",
    "Bearer",
    "Bearer ",
    f"Basic {TOKEN}",
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN.upper()}",
    "Bearer " + "a" * 10_000,
    f"bearer{TOKEN}",
    f"Token {TOKEN}",
    "Bearer \u00e9\u00e9\u00e9",
]


@pytest.mark.parametrize("header", BAD_AUTH, ids=lambda h: repr(h)[:24])
def test_writes_require_the_token(
    api: ManagedProcess, database_url: str, header: str | None
) -> None:
    headers: dict[bytes, bytes] = {} if header is None else {b"Authorization": header.encode()}
    with httpx.Client(base_url=api.base_url, timeout=10) as http:
        victim = http.post(
            "/products",
            json={"category_id": 1, "name": "victim", "price_cents": 5, "stock": 5},
            headers=_auth(),
        ).json()
        with psycopg.connect(database_url) as conn:
            count = conn.execute("SELECT count(*) FROM products").fetchone()
        requests = [
            ("POST", "/products", {"category_id": 1, "name": "x", "price_cents": 1, "stock": 1}),
            ("PATCH", f"/products/{victim['id']}", {"stock": 999}),
            ("DELETE", f"/products/{victim['id']}", None),
        ]
        for method, path, body in requests:
            try:
                response = http.request(method, path, json=body, headers=headers)
            except httpx.LocalProtocolError:
                continue  # the client itself refuses to send that header: nothing reached us
            assert response.status_code == 401, (method, path, response.status_code)
            assert "Traceback" not in response.text
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM products").fetchone() == count
        row = conn.execute(
            "SELECT version, stock FROM products WHERE id = %s", (victim["id"],)
        ).fetchone()
        assert row == (victim["version"], victim["stock"])


def test_token_is_compared_in_constant_time() -> None:
    source = (Path(__file__).resolve().parents[2] / "api" / "auth.py").read_text()
    assert "hmac.compare_digest" in source or "secrets.compare_digest" in source
    assert "== expected" not in source and "expected ==" not in source
