"""Pure parts of the worker jobs: the audit report and garbage key names."""

from __future__ import annotations

from worker.audit import AuditReport
from worker.jobs import tag_of_garbage_key


def report(checked: int, stale: int) -> AuditReport:
    return AuditReport(
        sampled=checked + 3,
        checked=checked,
        dead=2,
        unknown=1,
        stale=stale,
        deleted=[f"product:{i}" for i in range(stale)],
        duration_ms=12.5,
        at=0.0,
    )


def test_inconsistency_ratio_is_stale_over_checked() -> None:
    assert report(200, 3).ratio == 0.015
    assert report(0, 0).ratio == 0.0


def test_audit_log_line_has_the_figures() -> None:
    assert report(200, 3).line() == (
        "audit: sampled=203 checked=200 stale=3 ratio=0.015000 dead=2 unknown=1 duration_ms=12.5"
    )


def test_garbage_key_names_its_tag() -> None:
    assert tag_of_garbage_key("ns", "ns:gc:category:12:0123456789ab") == "category:12"
