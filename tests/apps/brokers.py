"""Broker settings shared by the tests and the apps they start in subprocesses."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

from kombu import Exchange, Queue

REDIS_URL = "redis://127.0.0.1:6379/15"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
POSTGRESQL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def service_error(host: str, port: int) -> str | None:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        return str(exc)
    return None


def broker_config(kind: str, queue: str | None = None) -> dict[str, Any]:
    """Flask config for one kind of broker, on a queue of its own (a fresh one by default)."""
    if kind == "embedded":
        return {}
    queue = queue or f"test-{uuid.uuid4().hex[:12]}"
    # A store prefix of the test's own: its records, indexes and tables.
    prefix = "t_" + queue.replace("-", "_")[-12:]
    if kind == "redis":
        return {
            "TASKS_BROKER_URL": REDIS_URL,
            "TASKS_RESULT_BACKEND": REDIS_URL,
            "TASKS_STORE_PREFIX": prefix,
            "TASKS_CELERY": {"task_default_queue": queue},
        }
    if kind == "rabbitmq":
        # The queue deletes itself a while after the test stops using it.
        declared = Queue(
            queue, Exchange(queue), routing_key=queue, queue_arguments={"x-expires": 120_000}
        )
        return {
            "TASKS_BROKER_URL": RABBITMQ_URL,
            "TASKS_STORE_URL": POSTGRESQL_URL,
            "TASKS_STORE_PREFIX": prefix,
            "TASKS_CELERY": {"task_default_queue": queue, "task_queues": (declared,)},
        }
    raise ValueError(kind)


def config_from_env() -> dict[str, Any]:
    """What a subprocess app reads: FT_BROKER (kind) and FT_QUEUE."""
    return broker_config(os.environ.get("FT_BROKER", "embedded"), os.environ.get("FT_QUEUE"))
