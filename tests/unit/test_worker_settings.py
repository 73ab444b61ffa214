"""Worker settings and Celery configuration (no server)."""

from __future__ import annotations

import pytest

from pgbust.errors import ConfigError
from pgbust.settings import load_settings
from worker.app import celery_config
from worker.settings import Settings, broker_from_redis_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CELERY_BROKER_URL", "REDIS_URL", "PGBUST_NAMESPACE", "PGBUST_QUEUE"):
        monkeypatch.delenv(name, raising=False)


def test_default_broker_is_the_cache_redis_with_a_database_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:secret@cache.example:6380/0")
    assert load_settings(Settings).broker_url == "redis://:secret@cache.example:6380/1"


def test_broker_of_a_unix_socket_redis_is_spelled_the_kombu_way() -> None:
    assert (
        broker_from_redis_url("unix:///run/redis.sock?db=0")
        == "redis+socket:///run/redis.sock?virtual_host=1"
    )


def test_celery_broker_url_is_read_without_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@mq:5672//")
    assert load_settings(Settings).broker_url == "amqp://guest:guest@mq:5672//"


def test_bad_broker_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "http://nope")
    with pytest.raises(ConfigError, match="CELERY_BROKER_URL"):
        load_settings(Settings)


def test_queue_is_named_after_the_namespace_so_namespaces_never_share_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGBUST_NAMESPACE", "shop-eu")
    assert load_settings(Settings).task_queue == "shop-eu.worker"
    monkeypatch.setenv("PGBUST_QUEUE", "custom")
    assert load_settings(Settings).task_queue == "custom"


def test_celery_acks_late_one_task_at_a_time_and_keeps_no_results() -> None:
    config = celery_config(Settings(namespace="n1"))
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_ignore_result"] is True
    assert config["task_serializer"] == "json"
    assert config["task_default_queue"] == "n1.worker"
    assert {entry["task"] for entry in config["beat_schedule"].values()} == {
        "pgbust.audit",
        "pgbust.decay_hot",
    }


def test_abandoned_messages_are_looked_for_within_the_visibility_timeout() -> None:
    options = celery_config(Settings(visibility_timeout_s=4))["broker_transport_options"]
    assert options["visibility_timeout"] == 4
    assert options["unacked_restore_interval"] == 2
    assert options["unacked_restore_throttle"] == 1
