"""Channels that go silent without closing (DESIGN invariant 8), with real processes.

A TCP proxy black-holes a connection: both sockets stay open, nothing is forwarded, no FIN or
RST is sent — a load balancer whose upstream died, an expired NAT entry. TCP keepalives are
answered by the proxy's kernel, so only the components' own liveness proofs can notice:

(a) an API instance's pub/sub connection: PINGs unanswered -> torn down within
    PGBUST_SUBSCRIBER_SILENCE_S, L1 flushed and bypassed, /healthz 503; resubscribes once the
    path heals;
(b) the invalidator's LISTEN connection: its probe NOTIFY never comes back -> dropped within
    PGBUST_CAPTURE_TIMEOUT_S, LISTEN again, epoch bumped;
(c) the invalidator's Redis: heartbeats unanswered -> /healthz 503, and after
    PGBUST_GIVE_UP_AFTER_S it gives its leadership up to a standby that reaches Redis.

In each, an UPDATE typed into psql after the fault must never be served stale once the bound
has passed. The detection times are printed (pytest -s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import redis

from api.settings import Settings as ApiSettings
from db.seed import Counts
from invalidator.listener import APPLICATION_NAME as LISTENER
from invalidator.settings import Settings as InvalidatorSettings
from pgbust.keys import Keyspace
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.proxy import TcpProxy, postgres_application
from tests.support.servers import RedisServer, wait_until

Conn = psycopg.Connection[tuple[Any, ...]]
SILENCE_S = ApiSettings.model_fields["subscriber_silence_s"].default
HEARTBEAT_S = InvalidatorSettings.model_fields["heartbeat_s"].default
CAPTURE_TIMEOUT_S = 3 * HEARTBEAT_S  # the default of PGBUST_CAPTURE_TIMEOUT_S
GIVE_UP_AFTER_S = 2.0  # shorter than the default (5 s) to keep the suite short
SLACK_S = 1.5  # scheduling on a shared 2-core machine, on top of each designed bound


def health(proc: ManagedProcess) -> tuple[int, dict[str, Any]]:
    try:
        response = httpx.get(proc.base_url + "/healthz", timeout=1.0)
    except httpx.HTTPError:
        return 0, {}
    return response.status_code, response.json()


def metric(proc: ManagedProcess, name: str, labels: str = "") -> float:
    text = httpx.get(proc.base_url + "/metrics", timeout=5).text
    wanted = f"{name}{{{labels}}}" if labels else name
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted + " ")
    )


def read(api: ManagedProcess, product_id: int) -> tuple[int, str]:
    response = httpx.get(f"{api.base_url}/products/{product_id}", timeout=10)
    response.raise_for_status()
    return int(response.json()["version"]), response.headers["X-Cache"]


def capture_live_on(api: ManagedProcess) -> bool:
    return bool(health(api)[1].get("subscriber", {}).get("capture") == "live")


def cached_in_l1(api: ManagedProcess, product_id: int) -> int:
    """Read until the entry is served from L1; its version."""
    assert wait_until(lambda: read(api, product_id)[1] == "L1", timeout=5)
    return read(api, product_id)[0]


def update(pg: Conn, product_id: int) -> int:
    row = pg.execute(
        "UPDATE products SET stock = stock + 1 WHERE id = %s RETURNING version", (product_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def never_stale(api: ManagedProcess, product_id: int, fresh: int, for_s: float) -> list[str]:
    """Read for `for_s`; every read older than `fresh` is returned (should be none)."""
    stale = []
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        version, tier = read(api, product_id)
        if version < fresh:
            stale.append(f"v{version} from {tier}")
        time.sleep(0.02)
    return stale


def via(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    user = f"{netloc[0]}@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


@pytest.fixture
def redis_proxy(redis_server: RedisServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(redis_server.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def postgres_proxy(database_url: str) -> Iterator[TcpProxy]:
    proxy = TcpProxy(urlsplit(database_url).port or 5432).start()
    yield proxy
    proxy.stop()


def role(proc: ManagedProcess) -> str:
    return str(health(proc)[1].get("role", ""))


def live(proc: ManagedProcess) -> bool:
    return bool(health(proc)[1].get("capture", {}).get("capture_live"))


# --- (a) the API's pub/sub connection ---------------------------------------------------------


def test_silent_subscription_is_torn_down_l1_bypassed_and_resubscribed_after_healing(
    procs: ProcessManager, seeded: Counts, pg: Conn, redis_proxy: TcpProxy
) -> None:
    procs.invalidator()
    api = procs.api("api-proxied", env={"REDIS_URL": via(redis_proxy, procs.env["REDIS_URL"])})
    assert wait_until(lambda: capture_live_on(api), timeout=10), api.log_tail()
    old = cached_in_l1(api, 8)

    silenced_at = time.monotonic()
    # the subscriber's connection (it sent SUBSCRIBE), and every new one, until heal()
    assert redis_proxy.black_hole(b"SUBSCRIBE") >= 1
    fresh = update(pg, 8)  # out of band: its invalidation is published into the black hole
    assert fresh > old

    assert wait_until(lambda: health(api)[0] == 503, timeout=SILENCE_S + SLACK_S), (
        health(api),
        api.log_tail(),
    )
    detected_s = time.monotonic() - silenced_at
    print(f"(a) silent subscription detected (/healthz 503) after {detected_s:.2f} s")
    body = health(api)[1]
    assert body["subscriber"]["state"] != "subscribed" and not body["subscriber"]["l1_enabled"]
    assert metric(api, "pgbust_api_subscriber_silences_total", 'what="connection"') >= 1
    # past the bound nothing stale is served, and nothing from L1, while the path is dead
    stale = never_stale(api, 8, fresh, for_s=2 * SILENCE_S)
    assert not stale, stale
    assert read(api, 8)[1] != "L1"
    assert health(api)[0] == 503  # resubscribing into the black hole does not pass for healthy

    redis_proxy.heal()
    healed_at = time.monotonic()
    assert wait_until(lambda: health(api)[0] == 200 and capture_live_on(api), timeout=10), (
        health(api),
        api.log_tail(),
    )
    print(f"(a) resubscribed and caching again {time.monotonic() - healed_at:.2f} s after healing")
    assert health(api)[1]["subscriber"]["reconnects"] >= 1
    assert cached_in_l1(api, 8) == fresh
    # and the new subscription carries invalidations again
    newer = update(pg, 8)
    assert wait_until(lambda: read(api, 8)[0] == newer, timeout=5)


# --- (b) the invalidator's LISTEN connection ----------------------------------------------------


def test_silent_listen_connection_is_detected_reconnected_and_the_epoch_bumped(
    procs: ProcessManager,
    seeded: Counts,
    pg: Conn,
    database_url: str,
    postgres_proxy: TcpProxy,
    redis_client: redis.Redis,
    keyspace: Keyspace,
) -> None:
    invalidator = procs.invalidator(env={"DATABASE_URL": via(postgres_proxy, database_url)})
    api = procs.api("api")
    assert wait_until(lambda: capture_live_on(api), timeout=10), api.log_tail()
    old = cached_in_l1(api, 9)
    epoch = int(redis_client.get(keyspace.epoch) or 0)
    reconnects = metric(invalidator, "pgbust_invalidator_reconnects_total", 'server="postgres"')

    silenced_at = time.monotonic()
    # the LISTEN session (its startup packet names it); new connections pass (heal at once)
    silenced = postgres_proxy.black_hole(postgres_application(LISTENER))
    postgres_proxy.heal()
    assert silenced == 1
    fresh = update(pg, 9)  # its NOTIFY goes into the black hole
    assert fresh > old

    def reconnected() -> bool:
        label = 'server="postgres"'
        return metric(invalidator, "pgbust_invalidator_reconnects_total", label) > reconnects

    assert wait_until(reconnected, timeout=CAPTURE_TIMEOUT_S + HEARTBEAT_S + SLACK_S), (
        invalidator.log_tail()
    )
    detected_s = time.monotonic() - silenced_at
    print(f"(b) silent LISTEN connection detected and dropped after {detected_s:.2f} s")
    assert metric(invalidator, "pgbust_invalidator_silences_total", 'channel="listen"') >= 1
    assert wait_until(lambda: int(redis_client.get(keyspace.epoch) or 0) > epoch, timeout=5)
    assert wait_until(lambda: read(api, 9)[0] == fresh, timeout=5)
    print(f"(b) the update is served {time.monotonic() - silenced_at:.2f} s after the fault")
    assert not never_stale(api, 9, fresh, for_s=0.5)
    # the new LISTEN connection carries changes again
    assert wait_until(lambda: capture_live_on(api), timeout=5)
    assert cached_in_l1(api, 9) == fresh
    newer = update(pg, 9)
    assert wait_until(lambda: read(api, 9)[0] == newer, timeout=5)


# --- (c) the invalidator's Redis ----------------------------------------------------------------


def test_active_invalidator_cut_off_from_redis_gives_up_to_a_standby_and_l2_is_not_served_stale(
    procs: ProcessManager,
    seeded: Counts,
    pg: Conn,
    redis_proxy: TcpProxy,
) -> None:
    cut_off = procs.invalidator(
        "inv-cut-off",
        env={
            "REDIS_URL": via(redis_proxy, procs.env["REDIS_URL"]),
            "PGBUST_GIVE_UP_AFTER_S": str(GIVE_UP_AFTER_S),
        },
    )
    assert wait_until(lambda: live(cut_off), timeout=10), cut_off.log_tail()
    standby = procs.invalidator("inv-standby")
    assert wait_until(lambda: role(standby) == "standby", timeout=5)
    api = procs.api("api")
    assert wait_until(lambda: capture_live_on(api), timeout=10), api.log_tail()
    old = cached_in_l1(api, 10)

    silenced_at = time.monotonic()
    redis_proxy.black_hole()  # every connection, and every new one
    fresh = update(pg, 10)
    assert fresh > old

    assert wait_until(lambda: health(cut_off)[0] == 503, timeout=CAPTURE_TIMEOUT_S + SLACK_S), (
        health(cut_off),
        cut_off.log_tail(),
    )
    unhealthy_s = time.monotonic() - silenced_at
    # no heartbeat reaches Redis: its liveness key expires, so Redis serves nothing any more
    # (L1 included: the API hears no heartbeat) — nothing stale past the bound
    bound_s = max(CAPTURE_TIMEOUT_S, SILENCE_S) + SLACK_S
    time.sleep(max(0.0, silenced_at + bound_s - time.monotonic()))
    stale = never_stale(api, 10, fresh, for_s=0.5)
    assert not stale, stale

    assert wait_until(lambda: role(standby) == "active", timeout=GIVE_UP_AFTER_S + 2 * SLACK_S), (
        cut_off.log_tail()
    )
    took_over_s = time.monotonic() - silenced_at
    print(
        f"(c) cut-off active invalidator: /healthz 503 after {unhealthy_s:.2f} s, "
        f"standby active after {took_over_s:.2f} s"
    )
    assert metric(cut_off, "pgbust_invalidator_give_ups_total", 'why="redis"') == 1
    assert wait_until(lambda: role(cut_off) == "standby", timeout=5)
    assert health(cut_off)[0] == 503  # a standby that cannot reach Redis says so ...
    assert not never_stale(api, 10, fresh, for_s=0.5)
    # ... and the new active one serves: heartbeats, caches, invalidation
    assert wait_until(lambda: capture_live_on(api), timeout=5), api.log_tail()
    assert cached_in_l1(api, 10) == fresh
    newer = update(pg, 10)
    assert wait_until(lambda: read(api, 10)[0] == newer, timeout=5)
    time.sleep(1.0)
    assert role(cut_off) == "standby"  # it stays standby: no flapping
