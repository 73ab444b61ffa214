"""Bad HTTP input against a real API process: the OpenAPI contract, SQL injection strings, tokens.

The contract: Schemathesis 4 (`st run <api>/openapi.json --checks all`, every phase including
the stateful one, with the write token) against a real `python -m api` on real Postgres and
Redis with an invalidator running: every response must be what the document says (status,
body schema, content type, headers, Allow), schema-valid requests accepted, invalid ones
refused with a 4xx, no 5xx, none slower than 5 s, no internals in an error body.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest

from db import seed
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "http-fuzz-token-0123456789"
# per operation and phase; the run's total (about 1,400 cases at 100) is printed
EXAMPLES = int(os.environ.get("PGBUST_FUZZ_EXAMPLES", "100"))
SEED = int(os.environ.get("PGBUST_FUZZ_SEED", "1"))
PHASES = ("examples", "coverage", "fuzzing", "stateful")

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
def stack(
    database_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessManager]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PGBUST_") and k not in {"API_TOKEN", "CELERY_BROKER_URL"}
    }
    namespace = f"fuzz{os.getpid()}"
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_server.url,
        CELERY_BROKER_URL=f"redis://127.0.0.1:{redis_server.port}/1",
        API_TOKEN=TOKEN,
        PGBUST_NAMESPACE=namespace,
        PYTHONUNBUFFERED="1",
    )
    seed.seed(database_url, products=50, categories=3, replace=True)
    manager = ProcessManager(env, tmp_path_factory.mktemp("http-fuzz"))
    manager.invalidator("invalidator-fuzz")
    manager.api("api-fuzz")
    yield manager
    manager.stop_all()


@pytest.fixture(scope="module")
def api(stack: ProcessManager) -> ManagedProcess:
    return next(p for p in stack.processes if p.name == "api-fuzz")


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_openapi_document_holds_under_schemathesis_every_check_and_phase(
    stack: ProcessManager, api: ManagedProcess, tmp_path: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{api.base_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        ",".join(PHASES),
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--max-response-time",
        "5",
        "--request-timeout",
        "10",
        "--report",
        "json",
        "--report-dir",
        str(tmp_path / "report"),
        "--no-color",
    ]
    # run from a scratch folder (Schemathesis keeps its replay cache in ./.schemathesis)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_checks",
    }
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    [path] = (tmp_path / "report").glob("*.json")
    report: dict[str, Any] = json.loads(path.read_text())
    cases = report["test_cases"]
    phases = {name: phase["status"] for name, phase in report["phases"].items()}
    print(
        f"schemathesis {report['schemathesis_version']}: {cases['generated']} cases over "
        f"{report['operations']['tested']} operations in {report['running_time']:.0f} s, "
        f"seed {report['seed']}, phases {phases}, failures {cases['unique_failures']}"
    )
    assert result.returncode == 0, output[output.find("FAILURES") :][-6000:] or output[-3000:]
    assert report["failures"] == [] and report["errors"] == []
    assert phases["stateful"] == phases["fuzzing"] == phases["coverage"] == "success", phases
    assert report["operations"]["tested"] == report["operations"]["total"] >= 8
    assert cases["generated"] >= EXAMPLES * 8
    assert all(proc.alive() for proc in stack.processes), [p.name for p in stack.processes]


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


NOT_JSON_BODIES = [b"{bad", b"\xff\xfe\x00", b"", b'{"category_id": 1, "name": "x"' * 1000]


@pytest.mark.parametrize("body", NOT_JSON_BODIES, ids=["syntax", "not-utf8", "empty", "large"])
def test_a_write_without_the_token_is_401_whatever_the_body(
    api: ManagedProcess, body: bytes
) -> None:
    """The token is checked before the body is read: no 400 or 422 tells a caller without
    the token anything about what it sent."""
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=api.base_url, timeout=10, headers=headers) as http:
        for method, path in (("POST", "/products"), ("PATCH", "/products/1")):
            response = http.request(method, path, content=body)
            assert response.status_code == 401, (method, body[:20], response.text)
            assert response.headers["www-authenticate"] == "Bearer"


# (method, path, JSON body or raw bytes, status, what the body must say)
EDGES: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/products", {"category_id": 1, "name": "a\u0000b", "price_cents": 1}, 422, "name"),
    ("POST", "/products", b'{"category_id": 1, "name": "\\ud800", "price_cents": 1}', 422, "name"),
    ("POST", "/products", {"category_id": 1, "name": "n", "price_cents": 2**53}, 422, "price"),
    ("POST", "/products", {"category_id": 1, "name": "n", "price_cents": 2**53 - 1}, 201, ""),
    ("POST", "/products", {"category_id": 1.0, "name": "n", "price_cents": 5.0}, 201, ""),
    ("POST", "/products", {"category_id": 99_999, "name": "n", "price_cents": 1}, 409, "99999"),
    ("PATCH", "/products/{id}", {"category_id": 99_999}, 409, "category_id 99999 does not exist"),
    ("PATCH", "/products/{id}", {"stock": None}, 422, "must not be null"),
    ("PATCH", "/products/{id}", {}, 422, "at least one"),
    ("PATCH", "/products/{id}", b'{"stock": "5"}', 422, "stock"),
    ("POST", "/products", b'{"name": "\xc3\x28"}', 400, "parsing the body"),  # not UTF-8
]


@pytest.mark.parametrize(("method", "path", "body", "status", "says"), EDGES)
def test_each_documented_error_has_its_documented_body(
    api: ManagedProcess, method: str, path: str, body: Any, status: int, says: str
) -> None:
    """One shape per status: 422 is the validation list (loc, msg, type), every other error
    a {"detail": sentence}; a refused input that cannot be encoded is echoed replaced."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**_auth(), "Content-Type": "application/json"}
    if "{id}" in path:  # a product of this test's own (the fuzzing may delete any other)
        created = httpx.post(
            api.base_url + "/products",
            json={"category_id": 1, "name": "edge", "price_cents": 1},
            headers=_auth(),
        )
        assert created.status_code == 201, created.text
        path = path.replace("{id}", str(created.json()["id"]))
    response = httpx.request(method, api.base_url + path, content=raw, headers=headers)
    assert response.status_code == status, response.text
    detail = response.json().get("detail")
    if status == 422:
        assert isinstance(detail, list) and detail, detail
        assert all({"loc", "msg", "type"} <= set(item) for item in detail), detail
    elif status >= 400:
        assert isinstance(detail, str), detail
    assert says in response.text, response.text


def test_methods_a_resource_lacks_are_405_with_every_method_it_has_in_allow(
    api: ManagedProcess,
) -> None:
    for method, path, allowed in (
        ("OPTIONS", "/products/1", "DELETE, GET, PATCH"),
        ("PUT", "/products/1", "DELETE, GET, PATCH"),
        ("HEAD", "/products/1", "DELETE, GET, PATCH"),
        ("GET", "/products", "POST"),
        ("DELETE", "/categories/1/summary", "GET"),
    ):
        response = httpx.request(method, api.base_url + path, headers=_auth())
        assert response.status_code == 405, (method, path, response.status_code)
        assert response.headers["allow"] == allowed, (method, path)
