"""How every chaos scenario runs: load, fault, recovery, drain, final sweep, record."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

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
) -> ScenarioRecord:
    """Heal the stack, start load, inject the fault (inside load.fault()), measure recovery,
    let writes continue, stop them, drain, sweep; append the record and assert 0 stale."""
    record = ScenarioRecord(scenario=name)
    results.append(record)
    stack.current_record = record  # an inject may add notes (detection times)
    stack.heal()
    stack.worker_deaths = []
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
        load.wait_for_writes(plan.after_writes)
    finally:
        stats = load.stop()
    record.reads, record.writes = stats.reads, stats.writes
    record.reads_during_fault = stats.reads_during_fault
    record.writes_during_fault = stats.writes_during_fault
    record.stale_reads_during_fault = stats.stale_reads_during_fault
    record.stale_reads_total = stats.stale_reads
    record.stale_reads_by_tier = dict(stats.stale_by_tier)
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
    sweep = stack.sweep()
    record.stale_after_sweep = sweep.stale
    record.sweep_checked = sweep.checked
    record.redis_entries_checked = sweep.redis_checked
    record.passed = sweep.stale == 0
    assert sweep.stale == 0, f"{sweep.stale} stale entries after the final sweep:\n" + (
        sweep.report()
    )
    return record
