"""Fault injection against the real stack; every scenario ends with the final sweep.

Faults are forced deterministically (signals, pg_terminate_backend, CLIENT KILL, proxy cuts);
recovery is awaited with wait_until. The only sleeps are the *length* of an outage, never a
guess that something has finished.
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
from tests.chaos.scenario import Inject, Plan, run_scenario
from tests.chaos.stack import GIVE_UP_AFTER_S, TAKEOVER_AFTER_S, ChaosStack, ScenarioRecord
from tests.support.load import LoadDriver
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


def test_sigkill_active_invalidator_standby_takes_over(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(
        stack, chaos_results, "1_sigkill_active_invalidator", _kill_active_invalidator, plan
    )


# --- 2. pg_terminate_backend the listener, repeatedly ---


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
        assert wait_until(lambda: bool(_listener_pids(stack.database_url)), timeout=30), (
            "no LISTEN connection:\n" + stack.logs()
        )
        old = set(_listener_pids(stack.database_url))
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            for pid in old:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        faults += 1
        load.wait_for_writes(5)
        assert wait_until(
            lambda: bool(set(_listener_pids(stack.database_url)) - old), timeout=30
        ), "the listener did not reconnect:\n" + stack.logs()
    return faults


def test_terminated_listener_connection_reconnects_and_misses_nothing(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(stack, chaos_results, "2_terminate_listener_backend", _terminate_listener, plan)


# --- 3. restart Postgres ---


def _restart_postgres(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
    for _ in range(plan.repeats):
        load.wait_for_writes(5)
        stack.postgres.restart()
        assert wait_until(stack.postgres_up, timeout=30)
    return plan.repeats


def test_postgres_restart(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(stack, chaos_results, "3_restart_postgres", _restart_postgres, plan)


# --- 4. stop Redis under load, start it again (empty, or from an older snapshot) ---


def _redis_outage(*, from_snapshot: bool) -> Inject:
    def inject(stack: ChaosStack, load: LoadDriver, plan: Plan) -> int:
        for _ in range(plan.repeats):
            if from_snapshot:
                stack.redis.snapshot()
                load.wait_for_writes(20)  # the snapshot now holds entries that are stale
            stack.redis.stop(keep_snapshot=from_snapshot)
            time.sleep(plan.outage_s)  # the outage itself
            stack.redis.start()
            load.wait_for_writes(5)
        return plan.repeats

    return inject


def test_redis_restart_empty(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    inject = _redis_outage(from_snapshot=False)
    run_scenario(stack, chaos_results, "4a_redis_restart_empty", inject, plan)


def test_redis_restart_from_old_snapshot_resurrects_nothing(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    inject = _redis_outage(from_snapshot=True)
    try:
        run_scenario(stack, chaos_results, "4b_redis_restart_from_old_snapshot", inject, plan)
    finally:
        (stack.redis.folder / "dump.rdb").unlink(missing_ok=True)
    # every new connection checks the server (pgbust.redis_connect) before it serves: the
    # snapshot's values are dead before the first read, so Redis never serves one of them
    record = chaos_results[-1]
    assert record.stale_reads_by_tier.get("L2", 0) == 0, record.stale_reads_by_tier


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


TABLE_WIDE = '{"v":1,"t":"products","op":"U","ts":%d,"all":true,"n":5000}'


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


def test_paused_invalidator_catches_up(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(stack, chaos_results, "7_sigstop_invalidator", _pause_invalidator, plan)


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


# --- 9. connections that go silent without closing ---


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
    record = stack.current_record
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
        record.notes.append(f"subscriptions silent: lost after {time.monotonic() - started:.2f}s")
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
        record.notes.append(f"LISTEN silent: dropped after {time.monotonic() - started:.2f}s")
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
        record.notes.append(
            f"invalidator Redis silent: standby active after {time.monotonic() - started:.2f}s"
        )
        time.sleep(plan.outage_s)
        redis_proxy.heal()
        load.wait_for_writes(5)
    return faults


def test_connections_that_go_silent_are_noticed_and_nothing_stays_stale(
    stack: ChaosStack, chaos_results: list[ScenarioRecord], plan: Plan
) -> None:
    run_scenario(stack, chaos_results, "9_silent_connections", _silent_connections, plan)


# --- control: the sweep is not vacuous ---


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
    assert stack.drain() is not None
    assert stack.sweep().stale == 0
