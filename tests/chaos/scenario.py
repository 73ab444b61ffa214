"""How every chaos scenario runs: load, fault, recovery, drain, final sweep, record."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.chaos.flushes import FlushWatch
from tests.chaos.stack import ChaosStack, ScenarioRecord
from tests.support.load import LoadDriver


@dataclass(frozen=True)
class Plan:
    """How long and how often, per mode."""

    full: bool
    warmup_writes: int
    after_writes: int
    repeats: int  # faults injected per scenario
    outage_s: float  # how long a fault lasts (stopped server, paused process)

    @classmethod
    def of(cls, full: bool) -> Plan:
        if full:
            return cls(full, warmup_writes=200, after_writes=200, repeats=3, outage_s=3.0)
        return cls(full, warmup_writes=30, after_writes=30, repeats=1, outage_s=1.0)


Inject = Callable[[ChaosStack, LoadDriver, Plan], int]


def run_scenario(
    stack: ChaosStack,
    results: list[ScenarioRecord],
    name: str,
    inject: Inject,
    plan: Plan,
    *,
    write_rate: float = 40.0,
    before_sweep: Callable[[ChaosStack], None] | None = None,
    no_flush: bool = False,
) -> ScenarioRecord:
    """Heal the stack, start load, inject the fault (inside load.fault()), measure recovery,
    let writes continue, stop them, drain, [before_sweep: a last fault that needs the writes
    stopped], sweep; append the record and assert 0 stale.

    Every epoch bump from the start of the load to the end of the drain is recorded; with
    `no_flush` (a fault where nothing can have been missed: WAL capture resumes from the slot)
    there must be none."""
    record = ScenarioRecord(
        scenario=name if stack.capture == "notify" else f"{name}_{stack.capture}",
        capture=stack.capture,
    )
    results.append(record)
    stack.heal()
    stack.worker_deaths = []
    stack.notes = []
    watch = FlushWatch(stack.redis_url, stack.keyspace).start()
    try:
        _run(stack, record, inject, plan, write_rate)
    finally:
        flushes = watch.stop()
        # -1: not counted (the scenario restarted Redis or killed its pub/sub clients, ours too)
        record.epoch_bumps = -1 if flushes.deaf_since else len(flushes.heard)
        record.flush_reasons = flushes.describe()[:20]
    if no_flush:
        assert not flushes.deaf_since, f"the flush watch lost Redis: {flushes.deaf_since}"
        # A Redis call that timed out (an instance continued after SIGSTOP finds its call in
        # flight timed out; a host so loaded that the proxy stalls) flushes for Redis' sake,
        # in both modes: recorded, not a capture that missed something.
        redis_side = [(o, r) for o, r in flushes.heard if _redis_reason(r)]
        record.notes += [f"flush for Redis' sake: {o}: {r}" for o, r in redis_side]
        captured = [(o, r) for o, r in flushes.heard if not _redis_reason(r)]
        unheard = flushes.epoch_changed and not flushes.heard
        assert not captured and not unheard, (
            f"{len(captured)} epoch bumps (epoch {flushes.epoch_before} -> "
            f"{flushes.epoch_after}) where nothing can have been missed:\n"
            + "\n".join(flushes.describe())
            + "\n"
            + stack.logs(40)
        )
    if before_sweep is not None:
        before_sweep(stack)
    sweep = stack.sweep()
    record.stale_after_sweep = sweep.stale
    record.sweep_checked = sweep.checked
    record.redis_entries_checked = sweep.redis_checked
    record.passed = sweep.stale == 0
    assert sweep.stale == 0, f"{sweep.stale} stale entries after the final sweep:\n" + (
        sweep.report()
    )
    return record


def _redis_reason(reason: str) -> bool:
    """A flush because Redis could not be reached or refused (invalidator/sink.py, the
    worker's retry), not because capture may have missed a change."""
    return any(
        words in reason
        for words in ("redis came back", "redis was unreachable", "redis refused", "retry: redis")
    )


def _run(
    stack: ChaosStack, record: ScenarioRecord, inject: Inject, plan: Plan, write_rate: float
) -> None:
    """Load, fault, recovery, more writes, drain: the part watched for flushes."""
    load = stack.load(write_rate=write_rate).start()
    try:
        assert load.wait_for_writes(plan.warmup_writes), "load did not start:\n" + stack.logs()
        with load.fault():
            fault_started = time.monotonic()
            record.faults_injected = inject(stack, load, plan)
            fault_ended = time.monotonic()
            recovered = stack.wait_recovered(timeout=60)
        if recovered is not None:
            record.time_to_recover_s = round(time.monotonic() - fault_ended, 3)
        record.notes.append(f"fault lasted {fault_ended - fault_started:.2f}s")
        record.notes += stack.notes
        load.wait_for_writes(plan.after_writes)
    finally:
        stats = load.stop()
    record.reads, record.writes = stats.reads, stats.writes
    hits = stats.x_cache["L1"] + stats.x_cache["L2"]
    record.cache_hit_ratio = round(hits / stats.reads, 3) if stats.reads else 0.0
    record.reads_during_fault = stats.reads_during_fault
    record.writes_during_fault = stats.writes_during_fault
    record.stale_reads_during_fault = stats.stale_reads_during_fault
    record.stale_reads_total = stats.stale_reads
    record.stale_reads_by_tier = dict(stats.stale_by_tier)
    record.max_staleness_ms = round(stats.max_staleness_ms, 3)
    record.stale_reads_outdated_at_mark = dict(stats.stale_outdated_at)
    record.stale_read_samples = [str(sample) for sample in stats.stale_samples[:20]]
    record.read_errors, record.write_errors = stats.read_errors, stats.write_errors
    record.error_statuses = {str(k): v for k, v in stats.error_statuses.items()}
    record.leaked_internals = stats.leaked_internals
    assert stats.leaked_internals == 0, "an error response showed internals (traceback)"
    assert record.time_to_recover_s is not None, "never recovered:\n" + stack.logs()
    drained = stack.drain(timeout=60)
    assert drained is not None, f"did not drain: {stack.drain_problem}\n{stack.logs(40)}"
    record.drain_s = round(drained, 3)
    record.worker_restarts = len(stack.worker_deaths)
    record.notes += [f"celery worker died and was restarted: {d}" for d in stack.worker_deaths]
