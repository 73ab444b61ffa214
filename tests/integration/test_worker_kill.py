"""A worker SIGKILLed in the middle of a task leaves it to another worker (late ack).

The first worker is held inside the task by a fault-injection hook (PGBUST_WORKER_HOLD_KEY:
every task announces itself and blocks until that Redis key exists), killed there, and a second
worker redoes the task. With RabbitMQ the message comes back when the dead worker's connection
drops; with Redis as broker, after the visibility timeout.
"""

from __future__ import annotations

import pytest
import redis

from api.keys import product_entry
from pgbust.keys import Keyspace
from pgbust.protocol import Invalidation, Targets
from tests.integration.test_worker_helpers import (
    RABBITMQ_URL,
    delete_amqp_queue,
    fill_many,
    run,
    sender_for,
    start_worker,
    value_keys,
)
from tests.support.processes import ProcessManager
from tests.support.servers import RedisServer, wait_until

# the tests fill and invalidate as the invalidator would: they beat in its place too
pytestmark = pytest.mark.usefixtures("live_capture")


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_worker_killed_mid_task_leaves_the_task_to_another_worker(
    broker: str,
    procs: ProcessManager,
    stack_env: dict[str, str],
    redis_server: RedisServer,
    redis_client: redis.Redis,
    keyspace: Keyspace,
    namespace: str,
) -> None:
    broker_url = RABBITMQ_URL if broker == "rabbitmq" else stack_env["CELERY_BROKER_URL"]
    env = {"CELERY_BROKER_URL": broker_url, "PGBUST_VISIBILITY_TIMEOUT_S": "2"}
    hold = f"{namespace}:hold"
    entries = {product_entry(i): b"{}" for i in range(50)}
    fill_many(redis_server, keyspace, entries)
    flush = Targets(flush=True)
    run(redis_server, keyspace, lambda c: c.invalidate(flush, Invalidation.of(flush, origin="t")))
    try:
        first = start_worker(procs, "first", env={**env, "PGBUST_WORKER_HOLD_KEY": hold})
        sender = sender_for(stack_env, broker_url=broker_url)
        sender.purge("kill test")
        sender.close()
        assert wait_until(lambda: redis_client.exists(f"{hold}:started"), timeout=20)
        first.kill()
        assert len(value_keys(redis_client, keyspace)) == 50  # killed before doing anything

        second = start_worker(procs, "second", env=env)

        assert wait_until(lambda: value_keys(redis_client, keyspace) == [], timeout=40)
        assert "pgbust.purge_dead" in second.log_tail(100)
    finally:
        if broker == "rabbitmq":
            delete_amqp_queue(f"{namespace}.worker")
