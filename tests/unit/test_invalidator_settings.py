"""The invalidator's advisory lock id: one per namespace by default, an explicit override wins."""

from __future__ import annotations

import pytest

from invalidator.settings import Settings, default_lock_id
from pgbust.errors import ConfigError
from pgbust.settings import load_settings


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


def test_capture_timeout_follows_the_heartbeat_and_must_exceed_it() -> None:
    assert Settings().effective_capture_timeout_s == 1.5
    assert Settings(heartbeat_s=2.0).effective_capture_timeout_s == 6.0
    assert Settings(capture_timeout_s=4.0).effective_capture_timeout_s == 4.0
    with pytest.raises(ConfigError, match=r"PGBUST_CAPTURE_TIMEOUT_S.*PGBUST_HEARTBEAT_S"):
        load_settings(Settings, heartbeat_s=1.0, capture_timeout_s=0.8)


def test_each_lock_has_a_probe_channel_of_its_own_that_postgres_accepts() -> None:
    channels = {Settings(lock_id=i).probe_channel for i in (1, 2, -1, 2**63 - 1, -(2**63))}
    assert len(channels) == 5
    assert all(len(c) <= 63 and c.startswith("pgbust_probe_") for c in channels)
