"""Fault injection against the real stack; every scenario ends with the final sweep.

Faults are forced deterministically (signals, pg_terminate_backend, CLIENT KILL, proxy cuts);
recovery is awaited with wait_until. The only sleeps are the *length* of an outage, never a
guess that something has finished.

The invalidator's own faults (1 SIGKILL, 2 capture connection terminated, 3 Postgres restart,
7 SIGSTOP) run in both capture modes (conftest.py: `captures`). In wal mode none of them can
lose a change (the slot keeps what was not confirmed), so none may bump the epoch; in notify
mode each one flushes, as it must (NOTIFY is not durable). The short run (make test) takes
the two takeovers in wal mode (1, 7: where notify mode must flush and wal mode must not) and
the control; 2 and 3 in wal mode (a reconnect inside one process, also covered by
tests/integration/test_wal_capture.py) run with --chaos-full.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import psycopg
import pytest
import redis

from invalidator.listener import APPLICATION_NAME as LISTENER
from pgbust.keys import Keyspace
from tests.chaos.scenario import Inject, Plan, run_scenario
from tests.chaos.stack import (
    CATEGORIES,
    GIVE_UP_AFTER_S,
    TAKEOVER_AFTER_S,
    ChaosStack,
    ScenarioRecord,
)
from tests.support.load import LoadDriver
from tests.support.memory import (
    age,
    fill_until_full,
    is_full,
    limit_memory,
    press,
    unlimit_memory,
)
from tests.support.processes import ManagedProcess
from tests.support.proxy import postgres_application
from tests.support.servers import wait_until
from tests.support.sweep import probe_write

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def plan(chaos_full: bool) -> Plan:
    return Plan.of(chaos_full)


# --- 1. SIGKILL the active invalidator mid-burst ---


def _kill_active_invalidator(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
    faults = 0
    for _ in range(plan.repeats):
        active = stack.active_invalidator()
        assert active is not None, "no active invalidator:\n" + stack.logs()
        load.wait_for_writes(10)  # in the middle of the burst
        active.kill()
        faults += 1
        stack.invalidators.remove(active)
        assert wait_until(lambda: stack.active_invalidator() is not None, timeout=30), (
            "the standby did not take over:\n" + stack.logs()
        )
        stack.invalidators.append(stack.start_invalidator())  # a new standby for the next round
    return faults


@pytest.mark.captures("notify", "wal")
def test_sigkill_active_invalidator_standby_takes_over(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(
        stack,
        chaos_results,
        "1_sigkill_active_invalidator",
        _kill_active_invalidator,
        plan,
        no_flush=stack.capture == "wal",  # the standby resumes from the slot
    )


# --- 2. pg_terminate_backend the capture connection (LISTEN, or the walsender), repeatedly ---


def _capture_pids(stack: ChaosStack) -> list[int]:
    """The backends the active invalidator's capture reads from: its LISTEN session (notify),
    or the walsender that holds the namespace's slot (wal)."""
    if stack.capture == "notify":
        return _listener_pids(stack.database_url)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (stack.slot,)
        ).fetchone()
    return [int(row[0])] if row and row[0] is not None else []


def _listener_pids(database_url: str) -> list[int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND query ILIKE 'listen%%'"
        ).fetchall()
    return [int(row[0]) for row in rows]


def _terminate_listener(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
    faults = 0
    for _ in range(plan.repeats * 3):
        assert wait_until(lambda: bool(_capture_pids(stack)), timeout=30), (
            "no capture connection:\n" + stack.logs()
        )
        old = set(_capture_pids(stack))
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            for pid in old:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        faults += 1
        load.wait_for_writes(5)
        assert wait_until(lambda: bool(set(_capture_pids(stack)) - old), timeout=30), (
            "the capture connection did not come back:\n" + stack.logs()
        )
    return faults


@pytest.mark.captures("notify", "wal", full_only=("wal",))
def test_terminated_listener_connection_reconnects_and_misses_nothing(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(
        stack,
        chaos_results,
        "2_terminate_listener_backend",
        _terminate_listener,
        plan,
        no_flush=stack.capture == "wal",  # the next session resumes from the slot
    )


# --- 3. restart Postgres ---


def _restart_postgres(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
    for _ in range(plan.repeats):
        load.wait_for_writes(5)
        stack.postgres.restart()
        assert wait_until(stack.postgres_up, timeout=30)
    return plan.repeats


@pytest.mark.captures("notify", "wal", full_only=("wal",))
def test_postgres_restart(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(
        stack,
        chaos_results,
        "3_restart_postgres",
        _restart_postgres,
        plan,
        no_flush=stack.capture == "wal",  # the slot survives the restart (a clean shutdown)
    )


# --- 4. stop Redis under load, start it again (empty, or from an older snapshot) ---


REDIS_BACK = "redis back"


def _redis_outage(*, from_snapshot: bool) -> Inject:
    def inject(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
        for _ in range(plan.repeats):
            if from_snapshot:
                stack.redis.snapshot()
                load.wait_for_writes(20)  # the snapshot now holds entries that are stale
            stack.redis.stop(keep_snapshot=from_snapshot)
            time.sleep(plan.outage_s)  # the outage itself
            load.mark(REDIS_BACK)  # before it can answer: nothing from before may be served
            stack.redis.start()
            load.wait_for_writes(5)
        return plan.repeats

    return inject


def _assert_nothing_from_before_the_restart_served(record: ScenarioRecord) -> None:
    """Reads after Redis came back never return a version already superseded before it (an
    entry of the old snapshot, an L1 copy that outlived the restart). A read stale by a few
    ms behind a commit acknowledged *after* the restart is the asynchronous invalidation that
    every scenario, and no fault at all, shows: README, Limits."""
    outdated = record.stale_reads_outdated_at_mark.get(REDIS_BACK, 0)
    assert outdated == 0, "\n".join(
        [
            f"{outdated} reads served a value outdated before Redis came back:",
            *record.stale_read_samples,
        ]
    )


def test_redis_restart_empty(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    inject = _redis_outage(from_snapshot=False)
    record = run_scenario(stack, chaos_results, "4a_redis_restart_empty", inject, plan)
    _assert_nothing_from_before_the_restart_served(record)


def test_redis_restart_from_old_snapshot_resurrects_nothing(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    inject = _redis_outage(from_snapshot=True)
    try:
        record = run_scenario(
            stack, chaos_results, "4b_redis_restart_from_old_snapshot", inject, plan
        )
    finally:
        (stack.redis.folder / "dump.rdb").unlink(missing_ok=True)
    # every new connection checks the server (pgbust.redis_connect) before it serves: the
    # snapshot's values are dead before the first read, so no tier serves one of them
    _assert_nothing_from_before_the_restart_served(record)


# --- 5. CLIENT KILL TYPE pubsub ---


def _pubsub_clients(stack: ChaosStack) -> int:
    client = stack.redis.client()
    try:
        return len(client.client_list(_type="pubsub"))
    finally:
        client.close()


def _kill_pubsub(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
    faults = 0
    for _ in range(plan.repeats * 2):
        assert wait_until(lambda: _pubsub_clients(stack) >= len(stack.apis), timeout=30), (
            "API instances are not subscribed:\n" + stack.logs()
        )
        client = stack.redis.client()
        try:
            killed = int(client.client_kill_filter(_type="pubsub"))
        finally:
            client.close()
        assert killed >= len(stack.apis)
        faults += 1
        load.wait_for_writes(10)
    assert wait_until(lambda: _pubsub_clients(stack) >= len(stack.apis), timeout=30), (
        "API instances did not re-subscribe:\n" + stack.logs()
    )
    return faults


def test_killed_pubsub_connections_flush_l1_and_resubscribe(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(stack, chaos_results, "5_client_kill_pubsub", _kill_pubsub, plan)


# --- 6. SIGKILL a Celery worker during a fan-out task ---


TABLE_WIDE = '{"v":2,"t":"public.products","op":"U","ts":%d,"all":true,"n":5000}'


def _kill_worker_mid_task(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
    hold_key = f"{stack.namespace}:chaos-hold"
    control = stack.redis.client()
    faults = 0
    try:
        for _ in range(plan.repeats):
            control.delete(hold_key, f"{hold_key}:started")
            for worker in stack.workers:
                worker.stop()
            held = stack.start_worker(env={"PGBUST_WORKER_HOLD_KEY": hold_key})
            stack.workers = [held]
            # a table-wide change, exactly what a bulk UPDATE or TRUNCATE sends: epoch bump
            # plus a purge fan-out for the worker
            with psycopg.connect(stack.database_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_notify('pgbust_changes', %s)", (TABLE_WIDE % (time.time() * 1e6),)
                )
            assert wait_until(lambda: control.exists(f"{hold_key}:started") == 1, timeout=30), (
                "the worker never started a task:\n" + stack.logs()
            )
            held.kill()  # SIGKILL in the middle of the task
            faults += 1
            stack.workers = [stack.start_worker()]
            broker = stack.broker.client()
            try:
                assert wait_until(lambda: _unacked(broker) == 0, timeout=60), (
                    "the killed task was never redelivered and finished:\n" + stack.logs()
                )
            finally:
                broker.close()
    finally:
        control.close()
    return faults


def _unacked(broker: redis.Redis) -> int:
    return int(broker.hlen("unacked"))


def test_sigkill_celery_worker_during_fan_out(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(stack, chaos_results, "6_sigkill_celery_worker", _kill_worker_mid_task, plan)


# --- 7. SIGSTOP the invalidator, then SIGCONT ---


def _pause_invalidator(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
    for _ in range(plan.repeats):
        active = stack.active_invalidator()
        assert active is not None
        active.signal(signal.SIGSTOP)
        try:
            load.wait_for_writes(5)
            # the standby must notice the silence and take over while the pause lasts
            assert wait_until(
                lambda: stack.active_invalidator() not in (None, active),
                timeout=TAKEOVER_AFTER_S + 5,
            ), stack.logs()
            time.sleep(plan.outage_s)  # the pause goes on after the takeover
        finally:
            active.signal(signal.SIGCONT)
        # the paused one, continued, finds its lock gone and stays a standby
        assert wait_until(lambda: stack.role(active) == "standby", timeout=10), stack.logs()
    return plan.repeats


@pytest.mark.captures("notify", "wal")
def test_paused_invalidator_catches_up(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(
        stack,
        chaos_results,
        "7_sigstop_invalidator",
        _pause_invalidator,
        plan,
        no_flush=stack.capture == "wal",  # the takeover resumes from the slot
    )


# --- 8. network delay and drops between the API and Redis ---


def _bad_network(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
    proxy = stack.proxy
    assert proxy is not None
    faults = 0
    for _ in range(plan.repeats):
        proxy.set_delay(0.05)
        faults += 1
        load.wait_for_writes(10)
        proxy.set_delay(0)
        proxy.cut()
        faults += 1
        load.wait_for_writes(5)
        proxy.block()
        faults += 1
        time.sleep(plan.outage_s)  # the partition itself
        proxy.unblock()
        load.wait_for_writes(5)
    return faults


def test_delayed_and_cut_network_between_api_and_redis(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(stack, chaos_results, "8_api_redis_network_faults", _bad_network, plan)


# --- 9. Redis evicting keys under allkeys-lru ---


def _guard_keys(control: redis.Redis, stack: ChaosStack) -> list[str]:
    """The namespace epoch, every tag generation and every tag member set."""
    ks = stack.keyspace
    found = [ks.epoch]
    for pattern in (ks.tag_generation("*"), ks.tag_members("*")):
        found += [key.decode() for key in control.scan_iter(match=pattern, count=1000)]
    return found


def _kill_summaries_then_evict_their_generations(stack: ChaosStack) -> None:
    """The sequence in which an evicted generation could revive a dead value, run once writes
    have stopped (so nothing moves the generations in between): the generations are evicted,
    every category summary is cached, its tag's member set is evicted, a psql UPDATE kills the
    summary (the dead value stays: nothing lists it any more), then the generation is evicted
    again. The final sweep reads those summaries: none may come back."""
    ks = stack.keyspace
    tags = [f"category:{c}:summary" for c in range(1, CATEGORIES + 1)]
    control = stack.redis.client()
    try:
        _kill_summaries(stack, control, ks, tags)
    finally:
        control.close()


def _kill_summaries(stack: ChaosStack, control: redis.Redis, ks: Keyspace, tags: list[str]) -> None:
    control.delete(*(ks.tag_generation(tag) for tag in tags))
    for base in stack.api_urls:
        for category_id in range(1, CATEGORIES + 1):
            httpx.get(f"{base}/categories/{category_id}/summary", timeout=5).raise_for_status()
    control.delete(*(ks.tag_members(tag) for tag in tags))
    before = {tag: control.get(ks.tag_generation(tag)) for tag in tags}
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE products SET stock = stock + 1"
            " WHERE id IN (SELECT min(id) FROM products GROUP BY category_id)"
        )
    assert wait_until(
        lambda: all(control.get(ks.tag_generation(t)) != before[t] for t in tags), timeout=30
    ), "the category changes were never invalidated:\n" + stack.logs()
    control.delete(*(ks.tag_generation(tag) for tag in tags))


def _redis_evicting(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
    """A small maxmemory under allkeys-lru and a burst of other data: Redis evicts (the
    guard keys aged first, so they are the first candidates); then, in case LRU spared some,
    every guard key is deleted the way eviction would. Invalidation must keep working."""
    control = stack.redis.client()
    evicted = faults = 0
    try:
        limit_memory(control, "allkeys-lru", 1 << 20)
        for _ in range(plan.repeats):
            load.wait_for_writes(10)
            guards = _guard_keys(control, stack)
            age(control, guards)
            evicted += press(control, 4 << 20)
            gone = sum(1 for key in guards if not control.exists(key))
            control.delete(*guards)
            faults += 1
            stack.notes.append(f"{gone} of {len(guards)} guard keys evicted by Redis, rest deleted")
            recovered = stack.wait_recovered(timeout=30)
            assert recovered is not None, "not invalidated under eviction:\n" + stack.logs()
            stack.notes.append(f"out-of-band write invalidated under eviction in {recovered:.2f}s")
            load.wait_for_writes(10)
    finally:
        unlimit_memory(control)
        control.close()
    assert evicted > 0, "Redis never evicted anything"
    stack.notes.append(f"{evicted} keys evicted by Redis")
    return faults


def test_redis_evicting_under_allkeys_lru(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    record = run_scenario(
        stack,
        chaos_results,
        "9_redis_evicting_allkeys_lru",
        _redis_evicting,
        plan,
        before_sweep=_kill_summaries_then_evict_their_generations,
    )
    assert not any(int(status) >= 500 for status in record.error_statuses), record.error_statuses


# --- 10. Redis full under noeviction ---


def _terms(stack: ChaosStack) -> dict[str, int]:
    return {proc.name: int(stack.health(proc).get("terms", -1)) for proc in stack.invalidators}


def _redis_full(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
    """Redis filled until it refuses writes (noeviction), kept full while the load goes on,
    a flush forced meanwhile (the listener's connection cut): every invalidation must still
    be applied, and no invalidator may restart its term over a refused command."""
    control = stack.redis.client()
    terms = _terms(stack)
    try:
        for _ in range(plan.repeats):
            limit_memory(control, "noeviction", 1 << 20)
            fill_until_full(control)
            assert is_full(control)
            load.wait_for_writes(10)  # API PATCHes and psql UPDATEs into a full Redis
            with psycopg.connect(stack.database_url, autocommit=True) as conn:
                for pid in _listener_pids(stack.database_url):
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            recovered = stack.wait_recovered(timeout=30)
            assert recovered is not None, "not invalidated while full:\n" + stack.logs()
            stack.notes.append(f"out-of-band write invalidated while full in {recovered:.2f}s")
            time.sleep(plan.outage_s)  # Redis stays full for the outage
            unlimit_memory(control)
    finally:
        unlimit_memory(control)
        control.close()
    after = _terms(stack)
    assert after == terms, f"an invalidator restarted its term: {terms} -> {after}"
    stack.notes.append(f"invalidator terms unchanged: {after}")
    return plan.repeats


def test_redis_full_under_noeviction(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    record = run_scenario(stack, chaos_results, "10_redis_full_noeviction", _redis_full, plan)
    assert not any(int(status) >= 500 for status in record.error_statuses), record.error_statuses
    refused = sum(
        _metric(stack.metrics(api), 'pgbust_api_fills_refused_total{reason="redis_full",tier="l2"}')
        for api in stack.apis
    )
    assert refused > 0, "the cache never found Redis full"


def _metric(text: str, sample: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample + " ")
    )


# --- 11. connections that go silent without closing ---


def _silences(stack: ChaosStack, proc: ManagedProcess, channel: str) -> float:
    text = stack.metrics(proc)
    wanted = f'pgbust_invalidator_silences_total{{channel="{channel}"}} '
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted)
    )


def _api_state(stack: ChaosStack, api: ManagedProcess) -> dict[str, Any]:
    subscriber = stack.health(api).get("subscriber", {})
    return subscriber if isinstance(subscriber, dict) else {}


def _silent_connections(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
    """Black-hole (open, silent, no FIN/RST) in turn: every API instance's subscription, the
    active invalidator's LISTEN connection, the active invalidator's Redis. Each must be
    noticed by the component's own liveness proof; the detection times go into the notes."""
    api_proxy, pg_proxy = stack.proxy, stack.invalidator_pg_proxy
    redis_proxy = stack.invalidator_redis_proxy
    assert api_proxy is not None and pg_proxy is not None and redis_proxy is not None
    faults = 0
    for _ in range(plan.repeats):
        # the API instances' subscriptions, for the outage (resubscribing into it fails too)
        started = time.monotonic()
        assert api_proxy.black_hole(b"SUBSCRIBE") >= len(stack.apis)
        faults += 1
        assert wait_until(
            lambda: all(_api_state(stack, a).get("state") != "subscribed" for a in stack.apis),
            timeout=10,
        ), stack.logs()
        stack.notes.append(f"subscriptions silent: lost after {time.monotonic() - started:.2f}s")
        time.sleep(plan.outage_s)
        api_proxy.heal()
        assert wait_until(
            lambda: all(_api_state(stack, a).get("capture") == "live" for a in stack.apis),
            timeout=15,
        ), stack.logs()
        load.wait_for_writes(5)

        # the active invalidator's LISTEN connection (only that one: new ones pass)
        active = stack.active_invalidator()
        assert active is not None
        before = _silences(stack, active, "listen")
        started = time.monotonic()
        silenced = pg_proxy.black_hole(postgres_application(LISTENER))
        pg_proxy.heal()
        assert silenced == 1, stack.logs()
        faults += 1
        assert wait_until(lambda: _silences(stack, active, "listen") > before, timeout=10), (
            stack.logs()
        )
        stack.notes.append(f"LISTEN silent: dropped after {time.monotonic() - started:.2f}s")
        load.wait_for_writes(5)

        # the active invalidator's Redis, for the outage: a standby must take over
        active = stack.active_invalidator()
        assert active is not None
        started = time.monotonic()
        # its connections name themselves (CLIENT SETNAME pgbust-invalidator-<pid>)
        redis_proxy.black_hole(f"pgbust-invalidator-{active.pid}\r\n".encode())
        faults += 1
        assert wait_until(
            lambda: stack.active_invalidator() not in (None, active), timeout=GIVE_UP_AFTER_S + 10
        ), stack.logs()
        stack.notes.append(
            f"invalidator Redis silent: standby active after {time.monotonic() - started:.2f}s"
        )
        time.sleep(plan.outage_s)
        redis_proxy.heal()
        load.wait_for_writes(5)
    return faults


def test_connections_that_go_silent_are_noticed_and_nothing_stays_stale(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(stack, chaos_results, "11_silent_connections", _silent_connections, plan)


# --- control: the sweep is not vacuous ---


@pytest.mark.captures("notify", "wal")
def test_final_sweep_detects_a_stale_entry_while_invalidation_is_paused(stack: ChaosStack) -> None:
    """With every invalidator paused, an out-of-band write leaves cached copies stale: the
    sweep must see them (on both instances), and they must be gone once invalidation resumes."""
    stack.heal()
    product_id = 7
    for base in stack.api_urls:
        for _ in range(2):
            httpx.get(f"{base}/products/{product_id}", timeout=5).raise_for_status()
    for proc in stack.invalidators:
        proc.signal(signal.SIGSTOP)
    try:
        probe_write(stack.database_url, product_id)
        sweep = stack.sweep()
    finally:
        for proc in stack.invalidators:
            proc.signal(signal.SIGCONT)
    stale = {(d.where, d.entry) for d in sweep.differences}
    for base in stack.api_urls:
        assert (base, f"product:{product_id}") in stale, sweep.report()
    assert stack.drain() is not None, stack.drain_problem
    after = stack.sweep()
    assert after.stale == 0, after.report() + "\n" + stack.logs(40)
