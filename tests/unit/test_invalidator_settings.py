"""The invalidator's advisory lock id: one per namespace by default, an explicit override wins."""

from __future__ import annotations

from invalidator.settings import Settings, default_lock_id


def test_default_lock_id_is_a_stable_63_bit_hash_of_the_namespace() -> None:
    ids = {default_lock_id(ns) for ns in ("pgbust", "shop", "shop-eu", "")}
    assert len(ids) == 4
    assert all(0 <= i < 2**63 for i in ids)
    # stable across processes and releases: changing it would split a running pair's election
    assert default_lock_id("pgbust") == default_lock_id("pgbust") == 6810546416909185920


def test_each_namespace_gets_its_own_lock_unless_one_is_set() -> None:
    a = Settings(namespace="alpha")
    b = Settings(namespace="beta")
    assert a.lock_id is None and a.effective_lock_id == default_lock_id("alpha")
    assert a.effective_lock_id != b.effective_lock_id
    assert Settings(namespace="alpha", lock_id=42).effective_lock_id == 42
