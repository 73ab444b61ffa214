"""Workers beside a Redis Cluster: Celery has no Redis Cluster broker (celery#2852), so with
PGBUST_REDIS_CLUSTER=true the tasks travel over RabbitMQ while the workers' cache work goes
to the cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_worker_helpers import (
    RABBITMQ_URL,
    delete_amqp_queue,
    sender_for,
    start_worker,
)
from tests.support.processes import ProcessManager
from tests.support.redis_cluster import RedisClusterServers
from tests.support.servers import wait_until


@pytest.fixture
def cluster_worker_env(
    redis_cluster: RedisClusterServers, namespace: str
) -> Iterator[dict[str, str]]:
    yield {
        "PGBUST_REDIS_CLUSTER": "true",
        "REDIS_URL": redis_cluster.url,
        "CELERY_BROKER_URL": RABBITMQ_URL,  # the queue is <namespace>.worker: this test's own
    }
    delete_amqp_queue(f"{namespace}.worker")


def test_a_worker_on_rabbitmq_runs_its_tasks_against_the_redis_cluster(
    procs: ProcessManager,
    stack_env: dict[str, str],
    cluster_worker_env: dict[str, str],
    redis_cluster: RedisClusterServers,
    namespace: str,
) -> None:
    hot = f"{namespace}:hot"
    cluster = redis_cluster.client()
    try:
        cluster.zadd(hot, {"product:1": 40, "product:2": 8})
        start_worker(procs, env=cluster_worker_env)
        sender = sender_for(stack_env, broker_url=RABBITMQ_URL)
        try:
            sender.send("pgbust.decay_hot")
        finally:
            sender.close()
        # the task came over RabbitMQ and halved the read counts on the cluster
        assert wait_until(lambda: cluster.zscore(hot, "product:1") == 20, timeout=30)
        assert cluster.zscore(hot, "product:2") == 4
    finally:
        cluster.delete(hot)
        cluster.close()
