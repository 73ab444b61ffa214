"""What the invalidator makes of pgbust.capture_status reports (invalidator/capture.py, pure)."""

from __future__ import annotations

from invalidator.capture import Report, TableCapture, observe

OK = TableCapture("public.products", True, (), "f1")
DISABLED = TableCapture(
    "public.products", False, ("public.products: update trigger disabled",), "f2"
)
DDL = "DDL not captured: event trigger pgbust_capture_ddl missing"


def report(*tables: TableCapture, ddl: str | None = None) -> Report:
    return Report(tables, ddl)


def test_the_first_report_of_a_term_never_flushes_the_term_start_flush_covers_it() -> None:
    verdict = observe(None, report(DISABLED), 1.0)
    assert verdict.flush is None
    assert verdict.errors == [
        "public.products is NOT captured: public.products: update trigger disabled; its "
        "changes may not be announced, so everything is flushed every 1 s until it is "
        "(`python -m db triggers status`)"
    ]


def test_a_table_that_is_not_captured_flushes_at_every_check_and_is_logged_once() -> None:
    first = observe(report(OK), report(DISABLED), 1.0)
    again = observe(report(DISABLED), report(DISABLED), 1.0)
    assert first.flush is not None and first.flush.kind == "not_captured"
    assert "public.products" in first.flush.reason
    assert len(first.errors) == 1
    assert again.flush is not None and again.flush.kind == "not_captured"
    assert again.errors == []


def test_a_table_captured_again_flushes_once_more() -> None:
    verdict = observe(report(DISABLED), report(OK), 1.0)
    assert verdict.flush is not None and verdict.flush.kind == "capture_changed"
    assert verdict.warnings[0].startswith("public.products is captured again")
    assert observe(report(OK), report(OK), 1.0).flush is None


def test_a_changed_fingerprint_flushes_once() -> None:
    rewritten = TableCapture("public.products", True, (), "f9")
    verdict = observe(report(OK), report(rewritten), 1.0)
    assert verdict.flush is not None and verdict.flush.kind == "capture_changed"
    assert verdict.warnings[0].startswith("capture of public.products changed")


def test_missing_ddl_event_triggers_are_warned_about_when_they_go_missing_only() -> None:
    assert observe(None, report(OK, ddl=DDL), 1.0).warnings == [DDL]
    assert observe(report(OK, ddl=DDL), report(OK, ddl=DDL), 1.0).warnings == []
    back = observe(report(OK, ddl=DDL), report(OK), 1.0)
    assert back.warnings == ["the DDL event triggers are in place again"] and back.flush is None


def test_rows_become_a_report_with_the_database_wide_ddl_problem() -> None:
    rows = [
        ("public.categories", True, [], "a", DDL),
        ("public.products", False, ["x", "y", "z", "w"], "b", DDL),
    ]
    parsed = Report.from_rows(rows)
    assert parsed.ddl_problem == DDL
    assert parsed.tables[1] == TableCapture("public.products", False, ("x", "y", "z", "w"), "b")
    verdict = observe(None, parsed, 0.5)
    assert verdict.errors[0].startswith("public.products is NOT captured: x; y; z; and 1 more")
